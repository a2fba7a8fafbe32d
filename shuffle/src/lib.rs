//! quern's shuffle layer: the bytes that cross from map tasks to reduce tasks.
//!
//! Today this crate owns the **block format** ([`block`]): map output is written as a
//! sequence of framed, rkyv-archived blocks, and the same bytes are later streamed to
//! reducers unchanged (the QUIC transport lands in this crate with the distributed
//! runtime). A reader validates each block once — checksum, framing, archive layout —
//! and then reads records in place, without copying.
//!
//! Invariants:
//! - Nothing here trusts its input: every decoder returns [`BlockError`] on malformed
//!   bytes and never panics, never uses `access_unchecked`.
//! - Frames start at 16-byte aligned offsets of the containing buffer/file, so a
//!   page-aligned mmap or an `AlignedVec` can be validated and read in place.

pub mod block;

pub use block::{
    decode_frame, Block, BlockError, BlockWriter, FrameIter, ValidBlock, FRAME_ALIGN,
    FRAME_HEADER_LEN,
};
