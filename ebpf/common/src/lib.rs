//! Types shared between the kernel programs and userspace.
