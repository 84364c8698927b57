//! The CLI's media commands: `send-file` (encrypt, upload with a progress bar, send the
//! message) and `fetch` (download, verify, decrypt), and the profile's record of received
//! media that `fetch` reads.
//!
//! A file being sent is staged in `<profile>/uploads/`: its ciphertext and the message that
//! describes it, named after the source file's path, size and modification time. Running the
//! same `send-file` again after an interruption (a dropped connection, a killed process)
//! reuses them, so the upload resumes from what the edge holds instead of starting over.

use crate::{await_stored, close, connect, Cli, CliResult};
use missive_client::content::MediaMessage;
use missive_client::transfer::Progress;
use missive_client::{Content, GroupId, Profile};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Where the profile keeps received media messages (`fetch` reads them by blob id).
fn received_dir(profile: &Profile) -> PathBuf {
    profile.dir.join("media")
}

fn uploads_dir(profile: &Profile) -> PathBuf {
    profile.dir.join("uploads")
}

fn private_dir(dir: &Path) -> CliResult {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> CliResult {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

fn decode_media(bytes: &[u8]) -> Option<MediaMessage> {
    match Content::decode(bytes).ok()? {
        Content::Media(m) => Some(*m),
        _ => None,
    }
}

/// Remembers a received media message so `fetch` can get its file later.
pub(crate) fn remember(profile: &Profile, media: &MediaMessage) -> CliResult {
    let dir = received_dir(profile);
    private_dir(&dir)?;
    let id = hex(&media.blob);
    write_private(
        &dir.join(id),
        &Content::Media(Box::new(media.clone())).encode(),
    )
}

pub(crate) fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A progress bar on an interactive terminal; nothing otherwise.
fn bar(total: u64, what: &str) -> impl Fn(Progress) + Send + Sync + 'static {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            b.set_style(style.progress_chars("=> "));
        }
        b.set_message(what.to_owned());
        b
    });
    move |p: Progress| {
        if let Some(b) = &bar {
            b.set_position(p.done);
            if p.done >= p.total {
                b.finish_and_clear();
            }
        }
    }
}

/// The staged ciphertext and message of `source`, made now or found from an earlier run.
async fn stage(
    profile: &Profile,
    source: &Path,
    caption: &str,
) -> CliResult<(PathBuf, PathBuf, MediaMessage)> {
    let dir = uploads_dir(profile);
    private_dir(&dir)?;
    let canonical =
        std::fs::canonicalize(source).map_err(|e| format!("{}: {e}", source.display()))?;
    let meta = std::fs::metadata(&canonical)?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut h = blake3::Hasher::new();
    h.update(canonical.as_os_str().as_encoded_bytes());
    h.update(&meta.len().to_be_bytes());
    h.update(&modified.to_be_bytes());
    h.update(caption.as_bytes());
    let name = h.finalize().to_hex()[..32].to_owned();
    let (cipher, message) = (
        dir.join(format!("{name}.enc")),
        dir.join(format!("{name}.msg")),
    );
    if let (Ok(bytes), Ok(m)) = (std::fs::read(&message), std::fs::metadata(&cipher)) {
        if let Some(media) = decode_media(&bytes).filter(|md| md.size == m.len()) {
            eprintln!("missive: resuming the upload of {}", source.display());
            return Ok((cipher, message, media));
        }
    }
    let partial = dir.join(format!("{name}.enc.partial"));
    let (src, part) = (canonical.clone(), partial.clone());
    let caption = caption.to_owned();
    let media = tokio::task::spawn_blocking(move || {
        missive_client::media::prepare_file(&src, &part, &caption)
    })
    .await??;
    std::fs::rename(&partial, &cipher)?;
    write_private(&message, &Content::Media(Box::new(media.clone())).encode())?;
    Ok((cipher, message, media))
}

/// `send-file NAME PATH [--caption TEXT] [--group ID]`.
pub(crate) async fn cmd_send_file(
    cli: &Cli,
    dir: &Path,
    to: Option<&str>,
    group: Option<GroupId>,
    path: &Path,
    caption: &str,
) -> CliResult {
    let profile = Profile::load(dir)?;
    let (cipher, message, media) = stage(&profile, path, caption).await?;
    let (client, mut events) = connect(cli, &profile).await?;
    let uploaded = client
        .upload_media(&media, &cipher, 0, bar(media.size, "uploading"))
        .await;
    if let Err(e) = uploaded {
        close(&client).await;
        return Err(e.into());
    }
    let content = Content::Media(Box::new(media.clone()));
    let receipt = match (to, group) {
        (_, Some(g)) => {
            await_stored(&client, &mut events, client.send_group_content(g, content)).await?
        }
        (Some(name), None) => {
            await_stored(&client, &mut events, client.send(name, content)).await?
        }
        (None, None) => {
            close(&client).await;
            return Err("send-file needs NAME or --group ID".into());
        }
    };
    close(&client).await;
    let _ = std::fs::remove_file(&cipher);
    let _ = std::fs::remove_file(&message);
    let mut out = std::io::stdout();
    writeln!(
        out,
        "{} {}",
        receipt.client_msg_id.to_hex(),
        hex(&media.blob)
    )?;
    out.flush()?;
    Ok(())
}

/// `fetch ID --out PATH`: ID is the media id `recv` printed (or a unique prefix of it).
pub(crate) async fn cmd_fetch(cli: &Cli, dir: &Path, id: &str, out: &Path) -> CliResult {
    let profile = Profile::load(dir)?;
    let received = received_dir(&profile);
    let id = id.to_ascii_lowercase();
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&received) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 && name.starts_with(&id) {
                found.push(e.path());
            }
        }
    }
    let path = match found.as_slice() {
        [one] => one.clone(),
        [] => return Err(format!("no received media with id {id} (run `recv` first)").into()),
        _ => return Err(format!("media id {id} is ambiguous; give more digits").into()),
    };
    let media = decode_media(&std::fs::read(&path)?).ok_or("damaged media record")?;
    let (client, _events) = connect(cli, &profile).await?;
    let fetched = client
        .fetch_media(&media, out, bar(media.size, "downloading"))
        .await;
    close(&client).await;
    let bytes = fetched?;
    println!("{bytes} bytes → {}", out.display());
    Ok(())
}
