//! Placeholder: filled by the reference classifier work.
