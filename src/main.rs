use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = orgsync::cli::Cli::parse();
    match orgsync::cli::run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("orgsync: {e:#}");
            std::process::exit(1);
        }
    }
}
