//! users (to be written).
