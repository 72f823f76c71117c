//! modelgate-loader: downloads a model from a source (Hugging Face Hub, object stores, HTTP,
//! local paths) into a versions directory, verifies every byte, and serves it through an
//! atomically switched symlink; optionally polls for new revisions and hot-swaps them.

pub mod archive;
pub mod cli;
pub mod digest;
pub mod fetch;
pub mod gcs;
pub mod log;
pub mod progress;
pub mod retry;
pub mod run;
pub mod safe_path;
pub mod source;
pub mod status;
pub mod versions;
