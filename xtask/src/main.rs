//! `cargo xtask`: builds the eBPF programs, runs the whole test suite (privileged tests
//! included) and the benchmarks.

mod bench;
mod chart;
mod cluster;
mod conformance;
mod dashboards;
mod ebpf;
mod example;
mod fuzz;
mod manifests;
mod soak;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Cedille build, test and benchmark driver")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF programs (nightly + bpf-linker) and print the object's path.
    BuildEbpf,
    /// Build release binaries of the agent (with its eBPF object embedded) and the gateway.
    Build,
    /// fmt, clippy, cargo-deny, unit tests, then the privileged tests (root).
    Test(test::TestArgs),
    /// Check the Helm chart: lint, render, schemas, RBAC against the binaries, install into
    /// the test API server.
    Chart,
    /// Check the Grafana dashboards: every query's metrics exported, and data from a real
    /// Prometheus scraping the real binaries (root).
    Dashboards,
    /// The real-cluster tier, against the cluster of CEDILLE_E2E_KUBECONFIG.
    E2e,
    /// Replay the Gateway API conformance data against the gateway (root).
    Conformance(conformance::Args),
    /// Run each gateway fuzz target briefly (cargo-fuzz, nightly) from its seeds and past
    /// findings.
    Fuzz(fuzz::Args),
    /// The gateway under load over HTTP/1.1, HTTPS and HTTP/2 while a route changes and its
    /// certificate rotates: zero failed requests and handshakes.
    Soak(soak::Args),
    /// Run the quickstart: an echo backend behind the gateway (HTTP :8080, HTTPS :8443).
    Example(example::Args),
    /// Benchmarks: `gateway` (against nginx and HAProxy), `agent` (eBPF against iptables
    /// capture and the bare kernel; both need `scripts/setup.sh --bench`), `kubernetes`
    /// (route propagation through the API, leader failover).
    Bench(bench::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::BuildEbpf => {
            let obj = ebpf::build()?;
            println!("{}", obj.display());
            Ok(())
        }
        Cmd::Build => {
            let obj = ebpf::build()?;
            util::cargo(&[
                "build",
                "--release",
                "-p",
                "cedille-agent",
                "-p",
                "cedille-gateway",
            ])
            .env(ebpf::OBJECT_ENV, &obj)
            .run()
        }
        Cmd::Test(args) => test::run(args),
        Cmd::E2e => test::e2e(),
        Cmd::Chart => chart::run(),
        Cmd::Dashboards => dashboards::run(),
        Cmd::Conformance(args) => conformance::run(args),
        Cmd::Example(args) => example::run(args),
        Cmd::Fuzz(args) => fuzz::run(args),
        Cmd::Soak(args) => soak::run(args),
        Cmd::Bench(args) => bench::run(args),
    }
}
