//! Offset-sync store (being written).
