//! `slidegrade-train`: the training harness as its own binary (feature `train`), until its
//! subcommands are flattened into `slidegrade`.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "slidegrade-train",
    about = "Train, distil and export slidegrade models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    #[command(flatten)]
    Train(slidegrade::train::cli::TrainCommand),
    #[command(flatten)]
    Data(slidegrade::dataset::cli::DataCommand),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(c) => slidegrade::train::cli::run(c),
        Command::Data(c) => slidegrade::dataset::cli::run(c),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
