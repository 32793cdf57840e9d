pub mod conn;
pub mod grpc;
pub mod http;
