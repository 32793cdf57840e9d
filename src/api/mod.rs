pub mod grpc;
pub mod http;
pub mod openapi;
