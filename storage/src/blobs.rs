//! Blob files: content-addressed ciphertext under the media directory, never in the database.
//!
//! ```text
//! media/blobs/ab/abcd…(64 hex)      complete, verified blobs (read-only once there)
//! media/partial/abcd….part          an upload in progress, written at offsets
//! media/partial/abcd….ranges        the byte ranges of the .part known durable
//! ```
//!
//! An upload is written where its bytes go (positional writes, so chunks may arrive in any
//! order and from several streams), so memory stays bounded whatever the size. Each byte of
//! a part is written once: a write first claims the bytes nobody holds or is writing, and
//! writes only those. Every [`CHECKPOINT_BYTES`] the part file is synced and its ranges
//! written beside it, so a restarted edge resumes from what is on disk. The BLAKE3 hash
//! follows the part's written prefix as it grows, so the last byte waits only for the hash
//! of what came out of order: only a part whose hash is its name becomes a blob (synced,
//! renamed, directory synced).

use missive_proto::{BlobId, ByteRange};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Bytes written to a part between two checkpoints (sync and ranges file).
pub const CHECKPOINT_BYTES: u64 = 8 * 1024 * 1024;

/// Why an upload's bytes were not taken.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes fall outside the blob's size.
    #[error("bytes {start}..{end} are outside a blob of {size} bytes")]
    OutOfBounds {
        /// First byte.
        start: u64,
        /// One past the last.
        end: u64,
        /// The blob's size.
        size: u64,
    },
    /// Every byte arrived but they do not hash to the blob's name; the part is dropped.
    #[error("the bytes hash to {actual}, not to the blob's name")]
    HashMismatch {
        /// What they hash to.
        actual: BlobId,
    },
    /// The part is not complete yet.
    #[error("the upload is missing bytes")]
    Incomplete,
    /// The bytes belong to a try of the upload that a newer one superseded.
    #[error("a newer try of this upload took over")]
    Superseded,
    /// The file system failed.
    #[error("blob file: {0}")]
    Io(#[from] std::io::Error),
}

/// Sorted, disjoint, non-adjacent byte ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet(Vec<ByteRange>);

impl RangeSet {
    /// Adds `start..end`, merging with what it touches.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut s, mut e) = (start, end);
        let mut kept = Vec::with_capacity(self.0.len() + 1);
        for r in self.0.drain(..) {
            if r.end < s || r.start > e {
                kept.push(r);
            } else {
                s = s.min(r.start);
                e = e.max(r.end);
            }
        }
        let at = kept.partition_point(|r| r.start < s);
        kept.insert(at, ByteRange { start: s, end: e });
        self.0 = kept;
    }

    /// Total bytes covered.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|r| r.end - r.start).sum()
    }

    /// Nothing covered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `0..size` is covered.
    pub fn covers(&self, size: u64) -> bool {
        size == 0 || (self.0.len() == 1 && self.0[0].start == 0 && self.0[0].end >= size)
    }

    /// The ranges.
    pub fn ranges(&self) -> &[ByteRange] {
        &self.0
    }

    /// Where the bytes from 0 on are all covered: the end of the first range if it starts at
    /// 0, else 0.
    pub fn prefix_end(&self) -> u64 {
        match self.0.first() {
            Some(r) if r.start == 0 => r.end,
            _ => 0,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * 16);
        for r in &self.0 {
            out.extend_from_slice(&r.start.to_be_bytes());
            out.extend_from_slice(&r.end.to_be_bytes());
        }
        out
    }

    /// Reads what [`RangeSet::encode`] wrote; anything malformed reads as nothing held (the
    /// client then sends the bytes again, which is slower but right).
    fn decode(bytes: &[u8], size: u64) -> Self {
        let mut set = Self::default();
        if !bytes.len().is_multiple_of(16) {
            return set;
        }
        for pair in bytes.chunks_exact(16) {
            let start = u64::from_be_bytes(pair[..8].try_into().unwrap_or_default());
            let end = u64::from_be_bytes(pair[8..].try_into().unwrap_or_default());
            if start >= end || end > size {
                return Self::default();
            }
            set.insert(start, end);
        }
        set
    }
}

/// The media directory.
#[derive(Debug, Clone)]
pub struct BlobFiles {
    blobs: PathBuf,
    partial: PathBuf,
}

impl BlobFiles {
    /// Opens (creating, owner-only) the media directory `root`.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let blobs = root.join("blobs");
        let partial = root.join("partial");
        for dir in [root, &blobs, &partial] {
            std::fs::create_dir_all(dir)?;
            set_owner_only(dir)?;
        }
        Ok(Self { blobs, partial })
    }

    /// Where the complete blob `id` lives. The name comes from the id's hex only, so no
    /// request can make it point outside the blob directory.
    pub fn blob_path(&self, id: &BlobId) -> PathBuf {
        let hex = id.to_hex();
        self.blobs.join(&hex[..2]).join(hex)
    }

    fn part_path(&self, id: &BlobId) -> PathBuf {
        self.partial.join(format!("{}.part", id.to_hex()))
    }

    fn ranges_path(&self, id: &BlobId) -> PathBuf {
        self.partial.join(format!("{}.ranges", id.to_hex()))
    }

    /// Whether the complete blob `id` is on disk.
    pub fn has(&self, id: &BlobId) -> bool {
        self.blob_path(id).is_file()
    }

    /// Opens the complete blob `id` for reading, with its size.
    pub fn open_blob(&self, id: &BlobId) -> std::io::Result<(File, u64)> {
        let file = File::open(self.blob_path(id))?;
        let size = file.metadata()?.len();
        Ok((file, size))
    }

    /// Opens the upload of `id` (`size` bytes), resuming from its part and ranges files when
    /// they are there.
    pub fn partial(&self, id: &BlobId, size: u64) -> Result<PartialBlob, BlobError> {
        let path = self.part_path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let ranges_path = self.ranges_path(id);
        let ranges = match std::fs::read(&ranges_path) {
            Ok(bytes) => RangeSet::decode(&bytes, size),
            Err(_) => RangeSet::default(),
        };
        Ok(PartialBlob {
            id: *id,
            file: Arc::new(file),
            size,
            ranges,
            claimed: Vec::new(),
            prefix: Arc::new(Mutex::new(PrefixHash::default())),
            checkpoints: Arc::new(Mutex::new(CheckpointLog::default())),
            taken: 0,
            unsynced: 0,
            path,
            ranges_path,
        })
    }

    /// Removes the complete blob `id` (no error when it is already gone).
    pub fn remove(&self, id: &BlobId) -> std::io::Result<()> {
        ignore_missing(std::fs::remove_file(self.blob_path(id)))
    }

    /// Removes the part and ranges files of `id`'s upload (no error when already gone).
    pub fn remove_partial(&self, id: &BlobId) -> std::io::Result<()> {
        ignore_missing(std::fs::remove_file(self.part_path(id)))?;
        ignore_missing(std::fs::remove_file(self.ranges_path(id)))
    }

    /// Uploads whose part file was not written for `idle`: stalled.
    pub fn stalled(&self, idle: Duration) -> std::io::Result<Vec<BlobId>> {
        let now = SystemTime::now();
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.partial)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".part")) else {
                continue;
            };
            let Some(id) = BlobId::from_hex(hex) else {
                continue;
            };
            let modified = entry.metadata()?.modified()?;
            if now.duration_since(modified).unwrap_or_default() >= idle {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Bytes in complete blobs and parts (what the media directory holds).
    pub fn bytes_on_disk(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return 0;
            };
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.blobs) + walk(&self.partial)
    }

    /// Moves a verified part into place as blob `id`, durably.
    fn install(&self, part: &Path, id: &BlobId) -> std::io::Result<()> {
        let dest = self.blob_path(id);
        let dir = dest.parent().unwrap_or(&self.blobs);
        std::fs::create_dir_all(dir)?;
        std::fs::rename(part, &dest)?;
        File::open(dir)?.sync_all()?;
        File::open(&self.blobs)?.sync_all()
    }
}

/// The bytes of one write that were nobody's yet: the write puts only these in the file, and
/// settles them with [`PartialBlob::settle`] whatever happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    offset: u64,
    len: u64,
    pieces: Vec<ByteRange>,
}

impl Claim {
    /// Whether the whole write was claimed (none of it held or being written already).
    fn is_whole(&self) -> bool {
        self.pieces.len() == 1
            && self.pieces[0].start == self.offset
            && self.pieces[0].end == self.offset + self.len
    }
}

/// Which checkpoint of a part is saved last, and whether the part is finished (then none is).
#[derive(Debug, Default)]
struct CheckpointLog {
    saved: u64,
    finished: bool,
}

/// A part's ranges at one moment, saved once the part file is synced: every byte they name
/// was written before the moment, so the sync covers them. Run without holding the part, so
/// its other writes go on meanwhile.
#[derive(Debug)]
#[must_use = "a checkpoint saves nothing until it runs"]
pub struct Checkpoint {
    number: u64,
    ranges: RangeSet,
    file: Arc<File>,
    ranges_path: PathBuf,
    log: Arc<Mutex<CheckpointLog>>,
}

impl Checkpoint {
    /// Syncs the part file, then replaces its ranges file with these ranges, unless a later
    /// checkpoint was saved already or the part is finished.
    pub fn run(self) -> std::io::Result<()> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.finished || log.saved >= self.number {
            return Ok(());
        }
        let at = |what: &str| {
            let what = what.to_owned();
            move |e: std::io::Error| {
                std::io::Error::new(e.kind(), format!("checkpoint {what}: {e}"))
            }
        };
        self.file.sync_data().map_err(at("sync"))?;
        let tmp = self.ranges_path.with_extension("ranges.tmp");
        let mut f = File::create(&tmp).map_err(at("create"))?;
        f.write_all(&self.ranges.encode())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.ranges_path).map_err(at("rename"))?;
        log.saved = self.number;
        Ok(())
    }
}

/// BLAKE3 of a part's bytes `0..upto`, fed as its written prefix grows.
#[derive(Debug, Default)]
struct PrefixHash {
    hasher: blake3::Hasher,
    upto: u64,
}

/// Writes into one upload's part file; positional, so writers of one part run side by side.
#[derive(Debug, Clone)]
pub struct PartWriter {
    file: Arc<File>,
    prefix: Arc<Mutex<PrefixHash>>,
}

impl PartWriter {
    /// Writes the claimed pieces of `bytes` (which go at `claim`'s offset).
    pub fn write(&self, claim: &Claim, bytes: &[u8]) -> Result<(), BlobError> {
        if bytes.len() as u64 != claim.len {
            return Err(BlobError::Io(std::io::Error::other(
                "the bytes are not the claimed write",
            )));
        }
        for piece in &claim.pieces {
            let at = (piece.start - claim.offset) as usize..(piece.end - claim.offset) as usize;
            self.file.write_all_at(&bytes[at], piece.start)?;
        }
        Ok(())
    }

    /// Feeds the hash up to `prefix_end` (a [`PartialBlob::prefix_end`] read after the write
    /// was settled). The write's own `bytes` are hashed where it claimed them all; bytes
    /// written by others are read back from the file, never taken from this write.
    pub fn hash_prefix(&self, prefix_end: u64, claim: &Claim, bytes: &[u8]) -> std::io::Result<()> {
        let mut prefix = self.prefix.lock().unwrap_or_else(|p| p.into_inner());
        let own = claim
            .is_whole()
            .then_some(claim.offset..claim.offset + claim.len);
        while prefix.upto < prefix_end {
            let upto = prefix.upto;
            match &own {
                Some(r) if r.contains(&upto) => {
                    let end = r.end.min(prefix_end);
                    prefix
                        .hasher
                        .update(&bytes[(upto - r.start) as usize..(end - r.start) as usize]);
                    prefix.upto = end;
                }
                _ => {
                    // Up to the write's own bytes, or the prefix's end.
                    let stop = own
                        .as_ref()
                        .filter(|r| r.start > upto)
                        .map_or(prefix_end, |r| r.start.min(prefix_end));
                    feed_from_file(&self.file, upto, stop, &mut prefix.hasher)?;
                    prefix.upto = stop;
                }
            }
        }
        Ok(())
    }
}

/// An upload in progress: the part file, which of its bytes are written and which are being
/// written.
#[derive(Debug)]
pub struct PartialBlob {
    id: BlobId,
    file: Arc<File>,
    size: u64,
    ranges: RangeSet,
    /// Pieces claimed by writes not settled yet.
    claimed: Vec<ByteRange>,
    prefix: Arc<Mutex<PrefixHash>>,
    checkpoints: Arc<Mutex<CheckpointLog>>,
    /// Checkpoints taken so far (each numbered, so an older one never overwrites a newer).
    taken: u64,
    unsynced: u64,
    path: PathBuf,
    ranges_path: PathBuf,
}

impl PartialBlob {
    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The ranges written so far.
    pub fn ranges(&self) -> &RangeSet {
        &self.ranges
    }

    /// Whether every byte is written.
    pub fn is_full(&self) -> bool {
        self.ranges.covers(self.size)
    }

    /// Where the written bytes from 0 on end.
    pub fn prefix_end(&self) -> u64 {
        self.ranges.prefix_end()
    }

    /// Whether a write not settled yet claimed any of the bytes `start..end`.
    pub fn is_being_written(&self, start: u64, end: u64) -> bool {
        self.claimed.iter().any(|c| c.start < end && start < c.end)
    }

    /// Claims the bytes of a `len`-byte write at `offset` that nobody holds or is writing
    /// (refused past the blob's end). Bytes held or claimed already are left out: what a
    /// part holds never changes, so the hash of its prefix stays true.
    pub fn claim(&mut self, offset: u64, len: u64) -> Result<Claim, BlobError> {
        let end = offset.saturating_add(len);
        if end > self.size {
            return Err(BlobError::OutOfBounds {
                start: offset,
                end,
                size: self.size,
            });
        }
        let taken = self.ranges.ranges().iter().chain(self.claimed.iter());
        let pieces = uncovered(offset, end, taken);
        self.claimed.extend(pieces.iter().cloned());
        Ok(Claim {
            offset,
            len,
            pieces,
        })
    }

    /// Ends `claim`: its pieces count as written if `written`, else they are free again.
    /// Returns how many bytes of the blob are held now, and every [`CHECKPOINT_BYTES`]
    /// written a [`Checkpoint`] for the caller to run once it lets go of the part (so other
    /// writes go on while the disk syncs).
    pub fn settle(&mut self, claim: &Claim, written: bool) -> (u64, Option<Checkpoint>) {
        self.claimed.retain(|c| !claim.pieces.contains(c));
        let mut due = None;
        if written {
            for piece in &claim.pieces {
                self.ranges.insert(piece.start, piece.end);
                self.unsynced += piece.end - piece.start;
            }
            if self.unsynced >= CHECKPOINT_BYTES {
                due = Some(self.take_checkpoint());
            }
        }
        (self.ranges.len(), due)
    }

    /// Writes `bytes` at `offset` (the parts nobody holds) and hashes what that adds to the
    /// prefix; returns how many bytes of the blob are held now.
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<u64, BlobError> {
        let claim = self.claim(offset, bytes.len() as u64)?;
        let wrote = self.writer().write(&claim, bytes);
        let (held, due) = self.settle(&claim, wrote.is_ok());
        wrote?;
        if let Some(checkpoint) = due {
            checkpoint.run()?;
        }
        self.writer()
            .hash_prefix(self.prefix_end(), &claim, bytes)?;
        Ok(held)
    }

    /// The ranges as they are now, to be saved once the part is synced.
    fn take_checkpoint(&mut self) -> Checkpoint {
        self.unsynced = 0;
        self.taken += 1;
        Checkpoint {
            number: self.taken,
            ranges: self.ranges.clone(),
            file: self.file.clone(),
            ranges_path: self.ranges_path.clone(),
            log: self.checkpoints.clone(),
        }
    }

    /// A handle that writes into the part without borrowing it, so several streams of one
    /// upload write at once: each write is [`claim`](Self::claim)ed, written, then
    /// [`settle`](Self::settle)d.
    pub fn writer(&self) -> PartWriter {
        PartWriter {
            file: self.file.clone(),
            prefix: self.prefix.clone(),
        }
    }

    /// Syncs the part, then records its ranges (ranges never claim bytes a crash could lose).
    pub fn checkpoint(&mut self) -> std::io::Result<()> {
        self.take_checkpoint().run()
    }

    /// Verifies the hash of the full part and installs it as the blob. On a mismatch the part
    /// is removed and the error names what the bytes hash to.
    pub fn finish(self, files: &BlobFiles) -> Result<(), BlobError> {
        if !self.is_full() {
            return Err(BlobError::Incomplete);
        }
        // A checkpoint under way ends first; none writes a ranges file after this.
        self.checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finished = true;
        self.file.set_len(self.size)?;
        // The sync waits on the disk and the hash on the CPU: side by side, the last byte's
        // confirmation waits for the longer of the two, not for both.
        let (synced, actual) = std::thread::scope(|scope| {
            let sync = scope.spawn(|| self.file.sync_all());
            let actual = self.hash_rest();
            let synced = sync
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the syncing thread panicked")));
            (synced, actual)
        });
        synced?;
        let actual = actual.map_err(|e| std::io::Error::new(e.kind(), format!("hash: {e}")))?;
        if actual != self.id {
            files.remove_partial(&self.id)?;
            return Err(BlobError::HashMismatch { actual });
        }
        files
            .install(&self.path, &self.id)
            .map_err(|e| std::io::Error::new(e.kind(), format!("install: {e}")))?;
        ignore_missing(std::fs::remove_file(&self.ranges_path))?;
        Ok(())
    }
}

impl PartialBlob {
    /// The hash of the whole part: the prefix hashed so far, fed the rest from the file; from
    /// scratch on two threads when nothing was hashed yet (a part reopened after a restart).
    fn hash_rest(&self) -> std::io::Result<BlobId> {
        let mut prefix = self.prefix.lock().unwrap_or_else(|p| p.into_inner());
        if prefix.upto == 0 {
            return hash_file(&self.path);
        }
        let upto = prefix.upto;
        feed_from_file(&self.file, upto, self.size, &mut prefix.hasher)?;
        prefix.upto = self.size;
        Ok(BlobId(*prefix.hasher.finalize().as_bytes()))
    }
}

/// The pieces of `start..end` that none of `taken` covers, in order.
fn uncovered<'a>(
    start: u64,
    end: u64,
    taken: impl Iterator<Item = &'a ByteRange>,
) -> Vec<ByteRange> {
    let mut pieces = vec![ByteRange { start, end }];
    for t in taken {
        pieces = pieces
            .into_iter()
            .flat_map(|p| {
                let before = (p.start < t.start.min(p.end)).then(|| ByteRange {
                    start: p.start,
                    end: t.start.min(p.end),
                });
                let after = (t.end.max(p.start) < p.end).then(|| ByteRange {
                    start: t.end.max(p.start),
                    end: p.end,
                });
                before.into_iter().chain(after)
            })
            .collect();
    }
    pieces.retain(|p| p.start < p.end);
    pieces
}

/// Below this size a file is hashed on the calling thread alone.
const SPLIT_HASH_ABOVE: u64 = 8 << 20;

/// BLAKE3 of a file, read in bounded pieces. A large file is hashed as the two subtrees of
/// BLAKE3's tree on two threads (the left one a power-of-two number of chunks, as the
/// standard tree splits it) and their chaining values merged into the root: the last byte of
/// a 2 GiB upload then waits half as long for its verification.
pub fn hash_file(path: &Path) -> std::io::Result<BlobId> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    if size <= SPLIT_HASH_ABOVE {
        let mut hasher = blake3::Hasher::new();
        feed_from_file(&file, 0, size, &mut hasher)?;
        return Ok(BlobId(*hasher.finalize().as_bytes()));
    }
    use blake3::hazmat::{left_subtree_len, merge_subtrees_root, HasherExt, Mode};
    let left_len = left_subtree_len(size);
    let (left, right) = std::thread::scope(|scope| {
        let left = scope.spawn(|| {
            let mut hasher = blake3::Hasher::new();
            feed_from_file(&file, 0, left_len, &mut hasher).map(|()| hasher.finalize_non_root())
        });
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(left_len);
        let right =
            feed_from_file(&file, left_len, size, &mut hasher).map(|()| hasher.finalize_non_root());
        let left = left
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the hashing thread panicked")));
        (left, right)
    });
    Ok(BlobId(
        *merge_subtrees_root(&left?, &right?, Mode::Hash).as_bytes(),
    ))
}

/// Feeds bytes `start..end` of `file` to `hasher`, a bounded buffer at a time.
fn feed_from_file(
    file: &File,
    start: u64,
    end: u64,
    hasher: &mut blake3::Hasher,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = start;
    while at < end {
        let n = (end - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

fn ignore_missing(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn set_owner_only(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_cover() {
        let mut r = RangeSet::default();
        r.insert(10, 20);
        r.insert(30, 40);
        assert_eq!(r.len(), 20);
        r.insert(20, 30);
        assert_eq!(r.ranges(), &[ByteRange { start: 10, end: 40 }]);
        r.insert(0, 5);
        assert!(!r.covers(40));
        r.insert(5, 10);
        assert!(r.covers(40));
        assert!(!r.covers(41));
        let back = RangeSet::decode(&r.encode(), 40);
        assert_eq!(back, r);
        assert!(RangeSet::decode(&r.encode(), 39).is_empty());
        assert!(RangeSet::decode(&[1, 2, 3], 40).is_empty());
    }

    fn id_of(bytes: &[u8]) -> BlobId {
        BlobId(*blake3::hash(bytes).as_bytes())
    }

    #[test]
    fn out_of_order_parts_resume_after_reopen_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let files = BlobFiles::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let id = id_of(&data);
        let mut part = files.partial(&id, data.len() as u64).unwrap();
        part.write_at(50_000, &data[50_000..]).unwrap();
        part.checkpoint().unwrap();
        drop(part);
        let mut part = files.partial(&id, data.len() as u64).unwrap();
        assert_eq!(
            part.ranges().len(),
            50_000,
            "the checkpoint survives a reopen"
        );
        assert!(matches!(
            part.write_at(99_999, &[1, 2]),
            Err(BlobError::OutOfBounds { .. })
        ));
        part.write_at(0, &data[..50_000]).unwrap();
        assert!(part.is_full());
        part.finish(&files).unwrap();
        assert_eq!(std::fs::read(files.blob_path(&id)).unwrap(), data);
        assert!(files.stalled(Duration::ZERO).unwrap().is_empty());
    }

    #[test]
    fn a_file_hashes_as_blake3_hashes_it_split_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let split = SPLIT_HASH_ABOVE as usize;
        for size in [0, 1, 1024, 1025, split, split + 1, split + 1025, 13_000_001] {
            let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(hash_file(&path).unwrap(), id_of(&bytes), "{size} bytes");
        }
    }

    #[test]
    fn a_write_takes_only_the_bytes_nobody_holds_or_is_writing() {
        let dir = tempfile::tempdir().unwrap();
        let files = BlobFiles::open(dir.path()).unwrap();
        let mut part = files.partial(&id_of(b"x"), 100).unwrap();
        let r = |start, end| ByteRange { start, end };

        let a = part.claim(0, 50).unwrap();
        let b = part.claim(25, 50).unwrap();
        assert_eq!(b.pieces, vec![r(50, 75)], "A's bytes are being written");
        assert_eq!(part.settle(&a, false).0, 0);
        let c = part.claim(0, 30).unwrap();
        assert_eq!(c.pieces, vec![r(0, 30)], "a failed write frees its bytes");
        assert_eq!(part.settle(&b, true).0, 25);
        assert_eq!(part.settle(&c, true).0, 55);
        assert_eq!(part.ranges().ranges(), &[r(0, 30), r(50, 75)]);
        assert_eq!(part.prefix_end(), 30);

        assert!(!part.is_being_written(0, 100), "all settled");
        let d = part.claim(10, 80).unwrap();
        assert!(part.is_being_written(40, 41) && !part.is_being_written(50, 75));
        assert_eq!(
            d.pieces,
            vec![r(30, 50), r(75, 90)],
            "held bytes are left out"
        );
        assert!(matches!(
            part.claim(90, 11),
            Err(BlobError::OutOfBounds { .. })
        ));
    }

    #[test]
    fn an_older_checkpoint_never_overwrites_a_newer_one_nor_outlives_the_part() {
        let dir = tempfile::tempdir().unwrap();
        let files = BlobFiles::open(dir.path()).unwrap();
        let step = CHECKPOINT_BYTES as usize;
        let data: Vec<u8> = (0..2 * step + 5).map(|i| (i % 241) as u8).collect();
        let id = id_of(&data);
        let size = data.len() as u64;
        let mut part = files.partial(&id, size).unwrap();
        let write = |part: &mut PartialBlob, at: usize, end: usize| {
            let claim = part.claim(at as u64, (end - at) as u64).unwrap();
            part.writer().write(&claim, &data[at..end]).unwrap();
            part.settle(&claim, true).1
        };
        let first = write(&mut part, 0, step).expect("a checkpoint after 8 MiB");
        let second = write(&mut part, step, 2 * step).expect("and after 16");
        second.run().unwrap();
        first.run().unwrap();
        assert_eq!(
            files.partial(&id, size).unwrap().ranges().len(),
            2 * step as u64,
            "the later ranges stay"
        );

        let late = part.take_checkpoint();
        assert!(write(&mut part, 2 * step, data.len()).is_none());
        part.finish(&files).unwrap();
        late.run().unwrap();
        assert!(
            !files.ranges_path(&id).exists(),
            "no ranges file after the blob"
        );
        assert_eq!(std::fs::read(files.blob_path(&id)).unwrap(), data);
    }

    #[test]
    fn a_rewrite_of_held_bytes_leaves_them_and_the_blob_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let files = BlobFiles::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let id = id_of(&data);
        let mut part = files.partial(&id, data.len() as u64).unwrap();
        part.write_at(0, &data[..2_999_999]).unwrap();
        let forged: Vec<u8> = std::iter::repeat_n(0xee, 1_000_000).collect();
        part.write_at(0, &forged).unwrap();
        part.write_at(2_999_999, &data[2_999_999..]).unwrap();
        part.finish(&files).unwrap();
        assert_eq!(std::fs::read(files.blob_path(&id)).unwrap(), data);
    }

    #[test]
    fn the_hash_follows_the_prefix_through_out_of_order_writes() {
        let dir = tempfile::tempdir().unwrap();
        let files = BlobFiles::open(dir.path()).unwrap();
        let mib = 1 << 20;
        let data: Vec<u8> = (0..3 * mib as u32 + 7)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let id = id_of(&data);
        let size = data.len() as u64;
        let mut part = files.partial(&id, size).unwrap();
        let upto = |part: &PartialBlob| part.prefix.lock().unwrap().upto;

        part.write_at(mib, &data[mib as usize..2 * mib as usize])
            .unwrap();
        assert_eq!(upto(&part), 0, "nothing from 0 on yet");
        part.write_at(0, &data[..mib as usize]).unwrap();
        assert_eq!(
            upto(&part),
            2 * mib,
            "its own bytes, then the next MiB from the file"
        );
        part.write_at(2 * mib, &data[2 * mib as usize..]).unwrap();
        assert_eq!(upto(&part), size);
        part.finish(&files).unwrap();
        assert_eq!(std::fs::read(files.blob_path(&id)).unwrap(), data);
    }

    #[test]
    fn a_part_that_does_not_hash_to_its_name_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let files = BlobFiles::open(dir.path()).unwrap();
        let id = id_of(b"the real bytes");
        let mut part = files.partial(&id, 14).unwrap();
        part.write_at(0, b"forged bytes!!").unwrap();
        assert!(matches!(
            part.finish(&files),
            Err(BlobError::HashMismatch { .. })
        ));
        assert!(!files.has(&id));
        assert!(files.stalled(Duration::ZERO).unwrap().is_empty());
    }
}
