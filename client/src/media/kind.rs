//! The media type of a file from its first bytes. A file's name or the app's guess can be
//! wrong or chosen by someone else; the magic numbers of the formats a messenger shows inline
//! cannot, so the recipient's app picks its viewer from these. Anything unknown is a document
//! (`application/octet-stream`), which no viewer opens inline.

/// How many leading bytes [`detect_mime`] looks at (fewer is fine: a short file is matched
/// on what it has). The Opus marker of an Ogg file sits at bytes 28..36.
pub const SNIFF_LEN: usize = 64;

/// The MIME type of a file whose first bytes are `header` (give at least [`SNIFF_LEN`] bytes
/// when the file has them): JPEG, PNG, GIF, WebP, HEIC, MP4/M4A/QuickTime, MP3, Ogg (Opus
/// marked as such) and PDF; anything else is `application/octet-stream`.
pub fn detect_mime(header: &[u8]) -> &'static str {
    let at = |offset: usize, magic: &[u8]| header.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"\xFF\xD8\xFF") {
        "image/jpeg"
    } else if at(0, b"\x89PNG\r\n\x1A\n") {
        "image/png"
    } else if at(0, b"GIF87a") || at(0, b"GIF89a") {
        "image/gif"
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        "image/webp"
    } else if at(4, b"ftyp") {
        iso_media(header.get(8..12).unwrap_or_default())
    } else if at(0, b"OggS") {
        // An Opus voice note's first page carries the `OpusHead` packet.
        if at(28, b"OpusHead") {
            "audio/ogg; codecs=opus"
        } else {
            "audio/ogg"
        }
    } else if at(0, b"%PDF-") {
        "application/pdf"
    } else if at(0, b"ID3") || is_mpeg_audio_frame(header) {
        "audio/mpeg"
    } else {
        "application/octet-stream"
    }
}

/// ISO base media files (`ftyp` box) by their major brand: the same container holds
/// videos, audio and HEIC photos.
fn iso_media(brand: &[u8]) -> &'static str {
    match brand {
        b"qt  " => "video/quicktime",
        b"M4A " | b"M4B " => "audio/mp4",
        b"heic" | b"heix" | b"mif1" | b"msf1" => "image/heic",
        _ => "video/mp4",
    }
}

/// An MPEG audio frame header (MP3 without an ID3 tag): 11 sync bits, then a version that is
/// not the reserved one, a layer that is not the reserved one (which also rules out AAC's ADTS
/// headers, whose layer bits are 00), and a bitrate index that is not the invalid 1111.
fn is_mpeg_audio_frame(header: &[u8]) -> bool {
    match header {
        [0xFF, b1, b2, ..] => {
            b1 & 0xE0 == 0xE0 && (b1 >> 3) & 0b11 != 0b01 && (b1 >> 1) & 0b11 != 0 && b2 >> 4 != 0xF
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ogg(packet: &[u8]) -> Vec<u8> {
        let mut page = b"OggS".to_vec();
        page.resize(28, 0);
        page.extend_from_slice(packet);
        page
    }

    #[test]
    fn known_magic_numbers_give_their_type() {
        let cases: &[(&[u8], &str)] = &[
            (b"\xFF\xD8\xFF\xE0\0\x10JFIF\0", "image/jpeg"),
            (b"\x89PNG\r\n\x1A\n\0\0\0\rIHDR", "image/png"),
            (b"GIF89a\x01\0\x01\0", "image/gif"),
            (b"RIFF\x24\0\0\0WEBPVP8 ", "image/webp"),
            (b"\0\0\0\x20ftypisom\0\0\x02\0", "video/mp4"),
            (b"\0\0\0\x14ftypqt  \0\0\0\0", "video/quicktime"),
            (b"\0\0\0\x1CftypM4A \0\0\0\0", "audio/mp4"),
            (b"\0\0\0\x18ftypheic\0\0\0\0", "image/heic"),
            (b"ID3\x04\0\0\0\0\0\0", "audio/mpeg"),
            // MPEG-1 Layer III, 128 kbit/s, 44.1 kHz.
            (b"\xFF\xFB\x90\x64", "audio/mpeg"),
            (b"%PDF-1.7\n", "application/pdf"),
        ];
        for (header, mime) in cases {
            assert_eq!(detect_mime(header), *mime, "{header:?}");
        }
        assert_eq!(detect_mime(&ogg(b"OpusHead")), "audio/ogg; codecs=opus");
        assert_eq!(detect_mime(&ogg(b"\x01vorbis")), "audio/ogg");
    }

    #[test]
    fn unknown_short_or_near_miss_headers_are_documents() {
        let cases: &[&[u8]] = &[
            b"",
            b"\xFF",
            b"\xFF\xD8",               // JPEG's SOI without a marker after it
            b"RIFF\x24\0\0\0WAVEfmt ", // RIFF, but audio/wav is not shown inline
            b"\xFF\xF1\x50\x80",       // AAC ADTS: layer bits 00, not MPEG audio
            b"\xFF\xFB\xF0\x64",       // bitrate index 1111 is invalid
            b"PK\x03\x04",             // a zip (docx, apk...) is a document
        ];
        for header in cases {
            assert_eq!(
                detect_mime(header),
                "application/octet-stream",
                "{header:?}"
            );
        }
        // An `ftyp` box cut before its brand is still an ISO media file.
        assert_eq!(detect_mime(b"\0\0\0\x20ftyp"), "video/mp4");
    }
}
