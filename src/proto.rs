//! Generated protobuf types and gRPC stubs for the `surfstore` package.
#![allow(missing_docs, clippy::all)]
tonic::include_proto!("surfstore");
