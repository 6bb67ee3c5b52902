//! `[terraform]`: the Terraform module cwo drives for `provider = "terraform"`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
/// `provider = "terraform"`: the shipped module (or your own) driven by cwo, one state per worker.
/// The VM is described by the `[gcp]` settings, as for the gcp provider.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TerraformSettings {
    /// A module directory ("" = the module shipped inside cwo). Its `*.tf` files are copied into
    /// each worker's own directory under the state dir.
    pub module: PathBuf,
    /// The terraform (or OpenTofu `tofu`) program ("" = `terraform` on PATH).
    pub binary: String,
    /// Extra input variables for your own module (strings).
    pub vars: BTreeMap<String, String>,
}

impl TerraformSettings {
    /// The program to run: `binary`, or `terraform` on PATH.
    pub(crate) fn program(&self) -> &str {
        match self.binary.as_str() {
            "" => "terraform",
            b => b,
        }
    }
}
