use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = modelgate_loader::cli::Args::parse();
    let code = modelgate_loader::run::run(args).await;
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
