//! Archives built entry by entry for the unpack and restore tests.

use std::io::Write;

use tar::{EntryType, Header};

/// A tar being built, entries with any name (hostile ones included: the name is written into
/// the header as bytes, past the checks `tar::Builder` would make).
pub struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    pub fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn header(name: &str, kind: EntryType, size: u64, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h
    }

    pub fn file(mut self, name: &str, body: &[u8]) -> Tar {
        self = self.file_mode(name, body, 0o644);
        self
    }

    pub fn file_mode(mut self, name: &str, body: &[u8], mode: u32) -> Tar {
        let mut h = Tar::header(name, EntryType::Regular, body.len() as u64, mode);
        h.set_cksum();
        self.0.append(&h, body).unwrap();
        self
    }

    /// A regular file under a long name (a GNU long-name entry first), through the builder's
    /// own checks: for well-formed deep paths.
    pub fn file_long(mut self, name: &str, body: &[u8]) -> Tar {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        self.0.append_data(&mut h, name, body).unwrap();
        self
    }

    pub fn dir(mut self, name: &str, mode: u32) -> Tar {
        let mut h = Tar::header(name, EntryType::Directory, 0, mode);
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    pub fn link(mut self, name: &str, kind: EntryType, target: &str) -> Tar {
        let mut h = Tar::header(name, kind, 0, 0o777);
        let raw = &mut h.as_old_mut().linkname;
        raw[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    pub fn special(mut self, name: &str, kind: EntryType) -> Tar {
        let mut h = Tar::header(name, kind, 0, 0o644);
        h.set_cksum();
        self.0.append(&h, &[][..]).unwrap();
        self
    }

    pub fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

pub fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}
