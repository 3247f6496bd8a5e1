//! Zip members (being written: until then a zip cannot be created).
use std::io::{self, Write};

use super::{ArchiveOptions, DataFill, Member, MemberWrite};

/// Writes members as a zip file.
pub(crate) struct ZipSink<W: Write> {
    _w: W,
}

impl<W: Write> ZipSink<W> {
    pub(crate) fn new(w: W, _opts: &ArchiveOptions) -> ZipSink<W> {
        ZipSink { _w: w }
    }
}

impl<W: Write> MemberWrite for ZipSink<W> {
    fn add(&mut self, _m: &Member, _data: &mut DataFill<'_>) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "zip archives are not supported by this build yet",
        ))
    }

    fn finish(self: Box<Self>) -> io::Result<u64> {
        Ok(0)
    }
}

/// Opens a zip file as a stream of members.
pub(crate) fn open(
    p: &std::path::Path,
    _jobs: usize,
) -> Result<Box<dyn super::MemberRead>, crate::Error> {
    Err(crate::Error::invalid(
        p,
        "zip archives are not supported by this build yet",
    ))
}
