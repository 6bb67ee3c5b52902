//! `cwo image build | list | prune | import`: worker images on Compute Engine.

use crate::cli::{FirmwareArg, Format, ImageCommand, ImportDistro};
use crate::error::{CommandError, ExitStatus};
use crate::journal::ControllerLock;
use crate::printer::Printer;
use crate::project::Project;
use crate::provider::gcp::import::Firmware;
use crate::report;

pub(crate) async fn image(
    project: &Project,
    printer: Printer,
    cmd: &ImageCommand,
) -> Result<ExitStatus, CommandError> {
    match cmd {
        ImageCommand::Build(args) => {
            // The builder is a journaled worker of this project: one controller at a time.
            let _lock = ControllerLock::acquire(&project.state_dir)?;
            let stop = tokio_util::sync::CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    printer.status("signal received: deleting the builder");
                    on_signal.cancel();
                }
            });
            let built = report::image::build(project, printer, &stop).await?;
            report::print(&printer, &built, args.format == Format::Json);
            Ok(ExitStatus::Success)
        }
        ImageCommand::List(args) => {
            let list = report::image::list(project).await?;
            report::print(&printer, &list, args.format == Format::Json);
            Ok(ExitStatus::Success)
        }
        ImageCommand::Import(args) => {
            let ImportDistro::Alpine = args.distro;
            let firmware = args.firmware.map(|f| match f {
                FirmwareArg::Uefi => Firmware::Uefi,
                FirmwareArg::Bios => Firmware::Bios,
            });
            let imported = report::image::import(project, printer, &args.from, firmware).await?;
            report::print(&printer, &imported, args.format == Format::Json);
            Ok(ExitStatus::Success)
        }
        ImageCommand::Prune(args) => {
            let pruned = report::image::prune(project, args.keep, args.dry_run).await?;
            report::print(&printer, &pruned, args.format == Format::Json);
            match pruned.failed() {
                0 => Ok(ExitStatus::Success),
                n => Err(
                    CommandError::user(format!("{n} image(s) could not be deleted"))
                        .hint("run `cwo image prune` again; the DETAIL column says why"),
                ),
            }
        }
    }
}
