//! Zip members to and from haul's member model.
//!
//! Writing ([`ZipSink`]): the output may be a pipe, so every local header
//! is written before its data with its sizes known (members up to 1 MiB
//! are compressed in memory first) or, for bigger members, with a data
//! descriptor (flag bit 3) after the data. Member data is cut into 1 MiB
//! pieces compressed on the rayon pool and written in order; a big
//! member's pieces are independent deflate streams ended by a sync flush
//! (pigz's technique), so one big file compresses on all cores too. The
//! central directory is spooled to an unnamed temporary file, so memory
//! stays flat for a million members.
//!
//! What zip carries in standard fields, for every tool: Unix modes in the
//! external attributes (made by Unix), symlinks as Info-ZIP writes them
//! (`S_IFLNK`, data = target), directories with a trailing `/`, mtimes as
//! MS-DOS time (UTC) and the 0x5455 extended timestamp, uid/gid in 0x7875.
//! What it cannot carry goes into haul's own extra field (0x6168, in the
//! central directory record of each member; layout in
//! `haul_formats::zipfmt::HaulExtra` and FORMAT.md): nanosecond mtime and
//! atime, devices and fifos (stored as empty regular files), hardlinks,
//! holes, extended attributes (ACLs and capabilities included). There is
//! no separate manifest member: a per-member field keeps the reader
//! streaming (nothing to load before the first member) and other tools
//! ignore unknown extra fields, so they still extract the plain files.
//!
//! Hardlinks: only the first name carries the data; later names are empty
//! members whose haul field names the first. The member model hands a
//! later name no data (create reads each inode once), the output cannot be
//! re-read, and pointing two central records at one local header is
//! exactly the overlapping-entry construction readers (haul's, unzip 6's)
//! refuse as a bomb. Other tools therefore see empty files for later
//! names; haul links them.
//!
//! Holes: a sparse file's data is written whole (holes as zeros, which
//! deflate to almost nothing), so other tools get the right bytes; haul's
//! field lists the data regions and extraction writes only those. Under
//! `--compression store` a sparse file is still deflated, so a 1 GiB hole
//! does not become 1 GiB of archive.
//!
//! Reading ([`open`]): by the central directory, streamed by `rawzip` on
//! a thread of its own (a million-record directory is never held whole;
//! the `zip` crate's `ZipArchive::new` loads every record). Each local
//! header is checked against its central record; overlapping members are
//! refused (Fifield's overlapping-entry zip bomb); inflation stops at the
//! declared size and the CRC is checked at the end.
mod read;
mod write;

pub(crate) use read::open;
pub(crate) use write::ZipSink;

/// Bytes of member data compressed as one piece.
const PIECE: usize = 1 << 20;
