use thiserror::Error;

/// Why a label selector string could not be parsed.
///
/// The message uses the wording of the Kubernetes API server, so the same bad selector reads
/// the same whether it is rejected here or by a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct SelectorError {
    message: String,
    offset: usize,
}

impl SelectorError {
    pub(super) fn new(message: String, offset: usize) -> Self {
        Self { message, offset }
    }

    /// Byte offset in the input where the offending part starts.
    pub fn offset(&self) -> usize {
        self.offset
    }
}
