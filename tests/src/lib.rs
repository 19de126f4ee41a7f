//! Shared helpers of the integration tests live in tests/tests/common.
