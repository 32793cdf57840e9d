//! seenn-serve: an inference server for spiking neural networks with early exit (SEENN).

// Unsafe code lives in one module, `engine::slots::ort_core` (ONNX Runtime's C API behind a safe
// API), which alone allows it; anything unsafe elsewhere is a compile error.
#![deny(unsafe_code)]

pub mod admin_token;
pub mod api;
pub mod bench;
pub mod calibrate;
pub mod config;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod eval;
pub mod exit;
pub mod graphs;
pub mod kserve;
pub mod metrics;
pub mod model;
pub mod npy;
pub mod openapi;
pub mod preprocess;
pub mod registry;
pub mod repository;
pub mod runtime;
pub mod server;
pub mod service;
pub mod simulate;
pub mod state;
