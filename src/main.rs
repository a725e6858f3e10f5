//! The `aether-control` binary: parse config, serve, drain on a signal.

use std::process::ExitCode;

use aether_control::config::Config;
use aether_control::server;
use aether_control::telemetry::Telemetry;

// glibc's malloc took about 11% of the service's CPU under load (perf, a
// GetAffinity pass): many small allocations freed on other threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for an unusable configuration (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::from_args();
    if let Err(error) = config.validate() {
        eprintln!("aether-control: configuration error: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let telemetry = match Telemetry::init(config.log_format, config.otlp_endpoint.as_deref()) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("aether-control: configuration error: AETHER_CONTROL_OTLP_ENDPOINT: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("aether-control: cannot listen on {}: {error}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let code = match server::serve(config, listener, None, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("aether-control: {error}");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
