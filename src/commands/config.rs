//! `cwo config show`: every resolved setting and where it came from.

use serde_json::json;

use crate::cli::Format;
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;

pub fn show(
    project: &Project,
    printer: Printer,
    format: Format,
) -> Result<ExitStatus, CommandError> {
    let entries = project.resolved.entries();
    if format == Format::Json {
        let settings: Vec<serde_json::Value> = entries
            .iter()
            .map(|(k, v, src)| json!({ "key": k, "value": v, "source": src, "origin": src.to_string() }))
            .collect();
        printer.json(json!({
            "project": project.root,
            "state_dir": project.state_dir,
            "settings": settings,
        }));
        return Ok(ExitStatus::Success);
    }
    let mut out = format!(
        "# project: {}\n# state_dir: {}\n",
        project.root.display(),
        project.state_dir.display()
    );
    for (key, value, src) in entries {
        out.push_str(&format!("{key} = {value}    # {src}\n"));
    }
    printer.out(out);
    Ok(ExitStatus::Success)
}
