//! Helpers for ferry's end-to-end tests.
