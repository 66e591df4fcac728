//! auth (to be written).
