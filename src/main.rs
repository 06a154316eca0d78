//! The `connmon` binary: a subcommand (`replay`, `simulate`, `help`) goes to `connmon::cli`;
//! otherwise read settings, pick the mode, run. Everything else lives in the library.

use connmon::settings::{Mode, Settings};
use std::net::SocketAddr;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(code) = connmon::cli::dispatch(&args) {
        return code;
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connmon: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("connmon: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(settings))
}

async fn serve(settings: Settings) -> ExitCode {
    let addr = match settings.mode {
        // The host always dials 127.0.0.1 (IPv4).
        Mode::Functions { port } => SocketAddr::from(([127, 0, 0, 1], port)),
        Mode::Standalone { listen, .. } => listen,
    };
    let notifier = connmon::channels(&settings);
    let store = match connmon::open_store(&settings, notifier.channel_names()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connmon: {e}");
            return ExitCode::from(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("connmon: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let mode = match settings.mode {
        Mode::Functions { .. } => "Functions custom handler",
        Mode::Standalone { .. } => "standalone Event Grid webhook",
    };
    connmon::log::info(format_args!(
        "connmon {} listening on {addr} as {mode} (grace {}s, alert channels: {})",
        env!("CARGO_PKG_VERSION"),
        settings.grace.as_secs(),
        notifier.channel_names().join(", ")
    ));
    match connmon::run(settings, store, notifier, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("connmon: server error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    connmon::log::info("shutting down");
}
