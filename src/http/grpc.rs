//! In-process gRPC calls: a transcoded request goes through the same tower
//! stack as a call from the network (auth, limits, metrics, services), as a
//! real gRPC request: length-prefixed frames, `application/grpc`, status in
//! the trailers.

use std::future::poll_fn;
use std::pin::Pin;

use axum::body::{Bytes, HttpBody};
use axum::http::{self, HeaderMap, HeaderName, HeaderValue, Method};
use prost::bytes::{Buf, BytesMut};
use tonic::{Code, Status};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

/// The gRPC stack, type-erased.
pub type GrpcService =
    BoxCloneSyncService<http::Request<tonic::body::Body>, http::Response<tonic::body::Body>, axum::BoxError>;

/// Type-erases a gRPC stack (e.g. the auth layer around `tonic::service::Routes`).
pub fn boxed<S, B>(service: S) -> GrpcService
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<axum::BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    BoxCloneSyncService::new(
        service
            .map_response(|response: http::Response<B>| response.map(tonic::body::Body::new))
            .map_err(Into::into),
    )
}

/// The request id header, echoed back to HTTP callers.
pub const REQUEST_ID: &str = "x-request-id";

/// HTTP headers passed on as gRPC metadata.
const FORWARDED_HEADERS: [&str; 3] = ["authorization", REQUEST_ID, "user-agent"];

/// Length prefix of a gRPC message: compressed flag + big-endian length.
const PREFIX_LEN: usize = 5;

/// Largest response message read (matches the servers' encoding limit).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// One gRPC frame holding `message`.
pub fn frame(message: &[u8]) -> Result<Bytes, Status> {
    let length = u32::try_from(message.len()).map_err(|_| Status::invalid_argument("request too large"))?;
    let mut framed = BytesMut::with_capacity(PREFIX_LEN + message.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    Ok(framed.freeze())
}

/// Calls `path` (`/package.Service/Method`) with one encoded request message.
pub async fn call(service: &GrpcService, path: &str, message: &[u8], headers: &HeaderMap) -> Result<Replies, Status> {
    let mut request = http::Request::builder()
        .method(Method::POST)
        .uri(path)
        .body(tonic::body::Body::new(axum::body::Body::from(frame(message)?)))
        .map_err(|e| Status::internal(format!("cannot build the gRPC request: {e}")))?;
    let metadata = request.headers_mut();
    metadata.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    metadata.insert(http::header::TE, HeaderValue::from_static("trailers"));
    for name in FORWARDED_HEADERS {
        if let Some(value) = headers.get(name) {
            metadata.insert(HeaderName::from_static(name), value.clone());
        }
    }
    let response = service.clone().oneshot(request).await.map_err(|error| {
        tracing::warn!(%error, path, "in-process gRPC call failed");
        Status::unavailable("the service cannot take the call")
    })?;
    if response.status() != http::StatusCode::OK {
        return Err(Status::unknown(format!("gRPC answered HTTP {}", response.status())));
    }
    let (parts, body) = response.into_parts();
    let request_id = parts.headers.get(REQUEST_ID).cloned();
    // Trailers-only response: the status is in the headers (and the request
    // id in the status metadata).
    if let Some(status) = Status::from_header_map(&parts.headers) {
        if status.code() != Code::Ok {
            return Err(status);
        }
        return Ok(Replies {
            body,
            buffer: BytesMut::new(),
            finished: true,
            request_id,
        });
    }
    Ok(Replies {
        body,
        buffer: BytesMut::new(),
        finished: false,
        request_id,
    })
}

/// The request id the gRPC stack answered with, as a header value.
pub fn status_request_id(status: &Status) -> Option<HeaderValue> {
    let value = status.metadata().get(REQUEST_ID)?;
    HeaderValue::from_bytes(value.as_encoded_bytes()).ok()
}

/// The reply messages of a call, then its status.
pub struct Replies {
    body: tonic::body::Body,
    buffer: BytesMut,
    finished: bool,
    request_id: Option<HeaderValue>,
}

impl Replies {
    /// The request id the gRPC stack answered with.
    pub fn request_id(&self) -> Option<&HeaderValue> {
        self.request_id.as_ref()
    }

    /// The next encoded reply message; None after an OK status; the status
    /// when it is not OK.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(message) = self.take_buffered()? {
                return Ok(Some(message));
            }
            if self.finished {
                if !self.buffer.is_empty() {
                    return Err(Status::internal("the gRPC reply ended inside a message"));
                }
                return Ok(None);
            }
            match poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await {
                None => {
                    self.finished = true;
                    return Err(Status::internal("the gRPC reply ended without a status"));
                }
                Some(Err(status)) => {
                    self.finished = true;
                    return Err(status);
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.finished = true;
                            let status = Status::from_header_map(&trailers)
                                .unwrap_or_else(|| Status::internal("the gRPC reply has no grpc-status"));
                            if status.code() != Code::Ok {
                                return Err(status);
                            }
                        }
                    }
                },
            }
        }
    }

    /// The single reply of a unary call (the stream must then end OK).
    pub async fn single(mut self) -> Result<Bytes, Status> {
        let message = self
            .next()
            .await?
            .ok_or_else(|| Status::internal("the gRPC reply has no message"))?;
        if self.next().await?.is_some() {
            return Err(Status::internal("a unary gRPC reply has more than one message"));
        }
        Ok(message)
    }

    fn take_buffered(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buffer.len() < PREFIX_LEN {
            return Ok(None);
        }
        if self.buffer[0] != 0 {
            return Err(Status::internal("compressed gRPC replies are not expected"));
        }
        let length = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize;
        if length > MAX_MESSAGE_BYTES {
            return Err(Status::resource_exhausted("the gRPC reply is too large"));
        }
        if self.buffer.len() < PREFIX_LEN + length {
            return Ok(None);
        }
        self.buffer.advance(PREFIX_LEN);
        Ok(Some(self.buffer.split_to(length).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_a_length_prefix() {
        let framed = frame(b"abc").unwrap();
        assert_eq!(&framed[..], &[0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(&frame(b"").unwrap()[..], &[0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn replies_are_split_on_frames_and_end_with_the_status() {
        let mut data = BytesMut::new();
        data.extend_from_slice(&frame(b"one").unwrap());
        data.extend_from_slice(&frame(b"two").unwrap());
        data.extend_from_slice(&frame(b"th").unwrap()[..4]);
        let mut replies = Replies {
            body: tonic::body::Body::empty(),
            buffer: data,
            finished: true,
            request_id: None,
        };
        assert_eq!(replies.next().await.unwrap().as_deref(), Some(&b"one"[..]));
        assert_eq!(replies.next().await.unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(replies.next().await.unwrap_err().code(), Code::Internal, "truncated");
    }
}
