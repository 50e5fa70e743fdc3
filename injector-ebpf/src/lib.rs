#![no_std]
// The library target exists so that `injectord` can declare a build
// dependency on this crate and be rebuilt when it changes.
