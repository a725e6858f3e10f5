//! UserService adapter (delivered with the users milestone).

use tonic::{Request, Response, Status};

use super::not_yet;
use crate::proto::user_service_server::UserService;
use crate::proto::*;

/// gRPC face of the user look-ups.
pub struct UserGrpc;

#[tonic::async_trait]
impl UserService for UserGrpc {
    async fn resolve_user(&self, _: Request<ResolveUserRequest>) -> Result<Response<ResolveUserResponse>, Status> {
        not_yet("aether.control.v1.UserService/ResolveUser")
    }

    async fn get_user(&self, _: Request<GetUserRequest>) -> Result<Response<GetUserResponse>, Status> {
        not_yet("aether.control.v1.UserService/GetUser")
    }

    async fn invalidate_user_cache(
        &self,
        _: Request<InvalidateUserCacheRequest>,
    ) -> Result<Response<InvalidateUserCacheResponse>, Status> {
        not_yet("aether.control.v1.UserService/InvalidateUserCache")
    }
}
