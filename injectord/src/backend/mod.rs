//! One backend per hook family. Each owns its programs' attachments and its
//! rule map; the shared statistics live in [`crate::datapath`].

pub mod connect;
