//! `skiff logger`: started by containerd's shim through a `binary://` log URI. Reads the
//! container's stdout (fd 3) and stderr (fd 4) and appends CRI-format lines to a file.

use crate::cli::LoggerArgs;

pub fn run(args: &LoggerArgs) -> anyhow::Result<()> {
    anyhow::bail!("logger not implemented yet: {}", args.path.display())
}
