//! The modelgate-sim binary: parse flags, bind, print the banner, serve until a signal.

use clap::Parser;
use modelgate_sim::{serve, validate, SimConfig};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() {
    let config = SimConfig::parse();
    if let Err(e) = validate(&config) {
        eprintln!("modelgate-sim: {e}");
        std::process::exit(2);
    }
    let listener = match TcpListener::bind((config.host.as_str(), config.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "modelgate-sim: cannot listen on {}:{}: {e}",
                config.host, config.port
            );
            std::process::exit(1);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("modelgate-sim: {e}");
            std::process::exit(1);
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("modelgate-sim: cannot install signal handlers");
            std::process::exit(1);
        }
    };
    println!("modelgate-sim listening on {addr}");
    let result = tokio::select! {
        r = serve(listener, config) => r,
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    };
    // Exit at once: open streams are simulated work with nothing to flush.
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("modelgate-sim: {e}");
            std::process::exit(1);
        }
    }
}
