use anyhow::Context;
use clap::Parser;
use tracing::error;

/// A proxy allocates and frees small objects on every request; mimalloc does that faster
/// than glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `arena_eager_commit` (its position in `mi_option_e`; libmimalloc-sys names
/// no constant for it).
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Memory is committed as it is used, not arena by arena. mimalloc commits whole arenas up
/// front where the kernel overcommits, and then only resets what it purges: freed memory
/// stayed resident (8 MiB at start, 10 more with 3,000 routes, `cargo xtask bench routes`).
/// The option is read when the first arena is made, at the first allocation, so it is set
/// from a constructor, before `main` and before Rust allocates anything.
extern "C" fn configure_allocator() {
    // SAFETY: `mi_option_set` stores an integer in mimalloc's option table; it needs no
    // initialised allocator and touches nothing else.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

#[used]
#[unsafe(link_section = ".init_array")]
static CONFIGURE_ALLOCATOR: extern "C" fn() = configure_allocator;

fn main() -> anyhow::Result<()> {
    let args = cedille_gateway::Args::parse();
    if args.print_permissions {
        println!(
            "{}",
            serde_json::to_string_pretty(&cedille_gateway::kube::permissions())?
        );
        return Ok(());
    }
    cedille_common::init_tracing(&args.log_format, "info,access=off")
        .map_err(anyhow::Error::msg)?;
    if args.check_config {
        return check(&args);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let running = cedille_gateway::app::start(args.settings()).await?;
        cedille_common::shutdown_signal().await?;
        running.shutdown().await;
        Ok(())
    })
}

/// `--check-config`: parse and validate every manifest, and translate, without serving.
fn check(args: &cedille_gateway::Args) -> anyhow::Result<()> {
    let dir = args
        .config_dir
        .as_ref()
        .context("--check-config needs --config-dir")?;
    let mut store = cedille_gateway::store::Store::new();
    cedille_objects::dir::DirSource::<cedille_gateway::model::Object>::once(dir).sync(&mut store);
    let errors = store.errors();
    for e in &errors {
        error!("{e}");
    }
    let out = cedille_gateway::translate::translate(
        &store,
        None,
        "1970-01-01T00:00:00Z",
        &cedille_gateway::translate::Env::default(),
    );

    println!("{}", serde_json::to_string_pretty(&out.status)?);
    if !errors.is_empty() {
        anyhow::bail!("{} manifest document(s) rejected", errors.len());
    }
    Ok(())
}
