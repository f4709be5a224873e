//! The compile-time refusals of `static_call!` and `declare_static_call!`,
//! each with the message a user sees (`tests/ui/*.stderr`; regenerate with
//! `TRYBUILD=overwrite cargo test --test compile_errors` after checking
//! that a changed message still says what to do).
//!
//! Host only: the messages are the same on every backend, and the cases
//! are compiled by a nested cargo for the host.
#![cfg(all(
    target_arch = "x86_64",
    target_os = "linux",
    not(feature = "force-generic")
))]

#[test]
fn refusals_say_what_to_do() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/null_key_returning_a_value.rs");
    t.compile_fail("tests/ui/ret0_key_without_a_zero_value.rs");
    t.compile_fail("tests/ui/initial_target_is_a_fn_pointer.rs");
    t.compile_fail("tests/ui/extern_c_float_argument.rs");
    t.compile_fail("tests/ui/extern_c_u128_return.rs");
    t.compile_fail("tests/ui/unsupported_abi.rs");
    t.compile_fail("tests/ui/declaration_without_unsafe.rs");
    t.compile_fail("tests/ui/hidden_declaration_without_unsafe.rs");
    t.compile_fail("tests/ui/elided_lifetime.rs");
    t.compile_fail("tests/ui/key_in_a_function_body.rs");
    t.compile_fail("tests/ui/nine_arguments.rs");
    t.compile_fail("tests/ui/call_inline_with_stack_arguments.rs");
    t.compile_fail("tests/ui/null_safe_is_sealed.rs");
    t.compile_fail("tests/ui/retarget_is_sealed.rs");
    t.compile_fail("tests/ui/writers_that_store_anywhere_are_unsafe_to_build.rs");
    t.compile_fail("tests/ui/ops_implementation_missing_an_operation.rs");
    t.compile_fail("tests/ui/ops_implementation_with_a_wrong_signature.rs");
    t.compile_fail("tests/ui/ops_null_operation_returning_a_value.rs");
    t.pass("tests/ui/lower_case_key_names.rs");
}
