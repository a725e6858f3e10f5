//! The authentication layer: one tower layer in front of every service (not
//! per handler). It authenticates the `authorization` metadata, checks the
//! method's scope, and hands the `Principal` to handlers in the request
//! extensions; refusals answer with a gRPC status without reaching a handler.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::auth::{Authenticator, Principal, authorize, required_scope};
use crate::error::Error;

/// Checks the credential in `headers` for a call to `path` (a gRPC method
/// path): Ok(None) for open methods (health, reflection), the principal when
/// it may call the method, else the refusal. The one check, used by the
/// layer and by the REST shim before it reports a request it cannot
/// transcode (a caller without credentials hears 401 first, as for gRPC).
pub async fn check(
    authenticator: &Authenticator,
    headers: &http::HeaderMap,
    path: &str,
) -> Result<Option<Principal>, Error> {
    let Some(needed) = required_scope(path) else {
        return Ok(None);
    };
    let header = match headers.get(http::header::AUTHORIZATION).map(|v| v.to_str()) {
        Some(Ok(value)) => Some(value),
        Some(Err(_)) => {
            return Err(Error::Unauthenticated {
                reason: "MALFORMED_CREDENTIAL",
            });
        }
        None => None,
    };
    let principal = authenticator.authenticate(header).await?;
    authorize(&principal, needed)?;
    Ok(Some(principal))
}

/// Layer that wraps the whole router.
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer checking with `authenticator`.
    pub fn new(authenticator: Arc<Authenticator>) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// The service the layer produces.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready inner service goes with this call; a fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            match check(&authenticator, request.headers(), &path).await {
                Ok(principal) => {
                    if let Some(principal) = principal {
                        request.extensions_mut().insert(principal);
                    }
                    inner.call(request).await
                }
                Err(error) => Ok(Status::from(error).into_http()),
            }
        })
    }
}
