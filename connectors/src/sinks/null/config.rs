//! The null sink's options: none.

use serde::{Deserialize, Serialize};

/// `type = "null"`: no options.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullSinkConfig {}
