//! Service-token authentication for test and benchmark clients: every call
//! carries `authorization: Bearer <token>`, as a gateway's calls do.
//! Benchmarks include this file by path, so it depends on nothing else in
//! `common`.

use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(pub &'static str);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = format!("Bearer {}", self.0)
            .parse()
            .map_err(|_| tonic::Status::internal("token metadata"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// A channel that authenticates every call.
pub type AuthedChannel = InterceptedService<Channel, BearerToken>;
