//! quern's shuffle layer: the bytes that cross from map tasks to reduce tasks, and the
//! authenticated QUIC transport they cross on.
//!
//! - [`block`]: the **block format**. Map output is written as a sequence of framed,
//!   rkyv-archived blocks, and the same bytes are later streamed to reducers unchanged.
//!   A reader validates each block once — checksum, framing, archive layout — and then
//!   reads records in place, without copying.
//! - [`auth`]: the cluster [`Secret`] and the mutual TLS 1.3 [`Identity`] every process
//!   derives from it, so only holders of the secret can connect in either direction.
//! - [`net`]: one QUIC [`endpoint`] per process (tuned for bulk transfer), [`connect`] /
//!   [`accept`] with authentication failures reported as [`NetError::Auth`],
//!   length-framed control messages ([`write_frame`] / [`read_frame`], rkyv [`encode`] /
//!   [`decode`]) and bulk segment transfer ([`send_segments`] / [`recv_segments`]).
//!
//! Invariants:
//! - Nothing here trusts its input: every decoder returns [`BlockError`] or [`NetError`]
//!   on malformed bytes and never panics, never uses `access_unchecked`; lengths read
//!   from the network are bounded before anything is allocated.
//! - Frames start at 16-byte aligned offsets of the containing buffer/file, so a
//!   page-aligned mmap or an `AlignedVec` can be validated and read in place; bytes
//!   received from the network land in `AlignedVec<16>` buffers.
//! - Exactly one rustls crypto provider is used: `ring`, passed explicitly.

pub mod auth;
pub mod block;
pub mod net;
pub mod wire;

pub use auth::{Identity, Secret, ALPN, SERVER_NAME};
pub use block::{
    decode_frame, Block, BlockError, BlockWriter, FrameIter, ValidBlock, FRAME_ALIGN,
    FRAME_HEADER_LEN,
};
pub use net::{
    accept, connect, decode, encode, endpoint, endpoint_with_identity, read_frame, recv_segments,
    recv_segments_reusing, send_segments, write_frame, NetError,
};
