//! `cwo bootstrap script`: the native bootstrap as cwo would send it, for a host of your own.

use crate::bootstrap::{Target, render};
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;

pub(crate) fn script(
    project: &Project,
    printer: &Printer,
    login_user: &str,
    gce: bool,
) -> Result<ExitStatus, CommandError> {
    let s = &project.resolved.settings;
    let script = render(s, &Target { login_user, gce });
    printer.out(&script.text);
    Ok(ExitStatus::Success)
}
