//! `seenn`: serve | inspect | eval | bench | simulate | openapi, all on one async runtime.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use seenn_serve::config::{LogFormat, ServeConfig};
use seenn_serve::server::{shutdown_signal, RunningServer};

#[derive(Parser)]
#[command(
    name = "seenn",
    version,
    about = "Early-exit inference server for spiking neural networks (SEENN)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every model package over HTTP and gRPC.
    Serve(ServeConfig),
    /// Load and validate model packages, print what they contain, and exit.
    Inspect(ServeConfig),
    /// Run the engine in-process over a labelled dataset: accuracy, timesteps, latency per rule.
    Eval(seenn_serve::eval::EvalArgs),
    /// Load generator against a running server (HTTP or gRPC), closed or open loop.
    Bench(seenn_serve::bench::BenchArgs),
    /// Run one package's step graph through the engine's batch buffers with no exit, writing every
    /// step's output (and with --states-out every state) as .npy: the parity check against the
    /// framework a model came from.
    Simulate(seenn_serve::simulate::SimulateArgs),
    /// Measure a package on your own labelled data through the engine (accuracy per step, AET, the
    /// α table over temperatures), choose its default α, and write calibration.json, golden samples
    /// and the model card's calibration section with the accuracy–timesteps curve.
    Calibrate(seenn_serve::calibrate::CalibrateArgs),
    /// Print the HTTP API's OpenAPI 3 document (committed as proto/openapi.json).
    Openapi,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEENN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Openapi => {
            print!("{}", seenn_serve::openapi::spec_json());
            ExitCode::SUCCESS
        }
        Command::Serve(cfg) => {
            init_logging(cfg.log_format);
            rt.block_on(async move {
                let server = match RunningServer::start(cfg).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        eprintln!("error: {e:#}");
                        return ExitCode::FAILURE;
                    }
                };
                shutdown_signal().await;
                server.shutdown().await;
                ExitCode::SUCCESS
            })
        }
        Command::Eval(args) => {
            init_logging(LogFormat::Text);
            match rt.block_on(seenn_serve::eval::run(args)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!(
                        "error: eval does not match the trainer's test numbers (report.json)"
                    );
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Simulate(args) => match seenn_serve::simulate::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Calibrate(args) => match seenn_serve::calibrate::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Bench(args) => match rt.block_on(seenn_serve::bench::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Inspect(cfg) => {
            init_logging(cfg.log_format);
            match seenn_serve::server::build_service(&cfg) {
                Ok(service) => {
                    for m in service.registry.models() {
                        match serde_json::to_string(&service.model_view(&m)) {
                            Ok(json) => println!("{json}"),
                            Err(e) => {
                                eprintln!("error: {e}");
                                return ExitCode::FAILURE;
                            }
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
