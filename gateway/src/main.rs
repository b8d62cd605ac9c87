use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = cedille_gateway::Args::parse();
    anyhow::bail!(
        "cedille-gateway cannot serve {} yet: the routing data plane is not built (see README, 'Status')",
        args.config_dir.display()
    )
}
