//! The thumbnail a media message carries for a photo, so the thread shows it before (or
//! without) the download.
//!
//! The photo is decoded and re-encoded from pixels, never copied: the new JPEG holds only a
//! JFIF header and image data, so EXIF (GPS position, camera serial, time), XMP, ICC and
//! comments in the original cannot leak through the preview. The EXIF orientation is applied
//! to the pixels first, since dropping it would show a portrait photo on its side.
//!
//! Decoding is bounded before any pixel is decoded: declared sizes above
//! [`MAX_SOURCE_SIDE`] per side or [`MAX_SOURCE_PIXELS`] in all give no preview, so a small
//! file that declares a huge image cannot exhaust a phone's memory.

/// Longest side of a preview, in pixels; the photo is scaled down to fit a square of this
/// side, keeping its aspect ratio (never scaled up).
pub const PREVIEW_MAX_SIDE: u32 = 320;

/// Largest preview, in bytes of JPEG. It rides inside the end-to-end encrypted message, so it
/// is kept well below the message size limit.
pub const PREVIEW_MAX_BYTES: usize = 48 * 1024;

/// Largest width or height of a photo that gets a preview (larger ones are refused before
/// decoding).
pub const MAX_SOURCE_SIDE: u32 = 12_000;

/// Largest pixel count of a photo that gets a preview (64 Mpx: above any phone camera).
pub const MAX_SOURCE_PIXELS: u64 = 64_000_000;

/// A preview: a baseline JPEG with no metadata, at most [`PREVIEW_MAX_SIDE`] pixels on its
/// longest side and [`PREVIEW_MAX_BYTES`] long.
#[derive(Clone, PartialEq, Eq)]
pub struct Preview {
    /// The JPEG file.
    pub jpeg: Vec<u8>,
    /// Its width in pixels.
    pub width: u32,
    /// Its height in pixels.
    pub height: u32,
}

impl std::fmt::Debug for Preview {
    // The pixels are content: show the size only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preview")
            .field("bytes", &self.jpeg.len())
            .field("width", &self.width)
            .field("height", &self.height)
            .finish()
    }
}

/// A preview of the JPEG or PNG photo in `image` (the whole file), or `None` when it is
/// another type, is corrupt, is larger than the bounds above, or does not fit
/// [`PREVIEW_MAX_BYTES`] even small and at low quality. Without the `previews` feature this
/// is always `None`.
///
/// Decoding a photo takes tens of milliseconds: call it off an async executor's threads.
pub fn preview(image: &[u8]) -> Option<Preview> {
    #[cfg(feature = "previews")]
    {
        imp::preview(image)
    }
    #[cfg(not(feature = "previews"))]
    {
        let _ = image;
        None
    }
}

#[cfg(feature = "previews")]
mod imp {
    use std::io::Cursor;

    use image::codecs::jpeg::JpegEncoder;
    use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

    use super::{Preview, MAX_SOURCE_PIXELS, MAX_SOURCE_SIDE, PREVIEW_MAX_BYTES, PREVIEW_MAX_SIDE};
    use crate::media::kind::detect_mime;

    /// JPEG qualities tried in turn until the preview fits; 60 looks fine at thumbnail size.
    const QUALITIES: [u8; 3] = [60, 45, 30];

    /// Bytes of decoded pixels allowed: 64 Mpx of 8-bit RGBA.
    const MAX_DECODED_BYTES: u64 = MAX_SOURCE_PIXELS * 4;

    pub(super) fn preview(bytes: &[u8]) -> Option<Preview> {
        let format = match detect_mime(bytes) {
            "image/jpeg" => ImageFormat::Jpeg,
            "image/png" => ImageFormat::Png,
            _ => return None,
        };
        let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
        let mut limits = Limits::default();
        limits.max_image_width = Some(MAX_SOURCE_SIDE);
        limits.max_image_height = Some(MAX_SOURCE_SIDE);
        limits.max_alloc = Some(MAX_DECODED_BYTES);
        reader.limits(limits);
        // Only the headers are read here; the checks below run before any pixel is decoded.
        let mut decoder = reader.into_decoder().ok()?;
        let (width, height) = decoder.dimensions();
        if width == 0
            || height == 0
            || width > MAX_SOURCE_SIDE
            || height > MAX_SOURCE_SIDE
            || u64::from(width) * u64::from(height) > MAX_SOURCE_PIXELS
            || decoder.total_bytes() > MAX_DECODED_BYTES
        {
            return None;
        }
        // A broken EXIF block only costs the rotation, not the preview.
        let orientation = decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms);
        let mut image = DynamicImage::from_decoder(decoder).ok()?;
        image.apply_orientation(orientation);
        // `thumbnail` also enlarges: a small picture is kept at its size.
        if image.width() > PREVIEW_MAX_SIDE || image.height() > PREVIEW_MAX_SIDE {
            image = image.thumbnail(PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE);
        }
        let mut rgb = flatten(&image);
        // Most previews fit at the first quality; halving the size is the last resort
        // (noise-like photos compress badly).
        for _ in 0..3 {
            for quality in QUALITIES {
                let jpeg = encode(&rgb, quality)?;
                if jpeg.len() <= PREVIEW_MAX_BYTES {
                    return Some(Preview {
                        jpeg,
                        width: rgb.width(),
                        height: rgb.height(),
                    });
                }
            }
            let (w, h) = (rgb.width() / 2, rgb.height() / 2);
            if w == 0 || h == 0 {
                return None;
            }
            rgb = flatten(&DynamicImage::ImageRgb8(rgb).thumbnail(w, h));
        }
        None
    }

    /// RGB pixels for the JPEG encoder; transparent PNG areas become white, as a light
    /// chat background shows them, instead of whatever colour their hidden pixels had.
    fn flatten(image: &DynamicImage) -> RgbImage {
        if !image.color().has_alpha() {
            return image.to_rgb8();
        }
        let rgba = image.to_rgba8();
        RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
            let [r, g, b, a] = rgba.get_pixel(x, y).0;
            let over_white = |c: u8| {
                let (c, a) = (u16::from(c), u16::from(a));
                // (c*a + 255*(255-a)) / 255 is at most 255: the cast cannot truncate.
                ((c * a + 255 * (255 - a)) / 255) as u8
            };
            image::Rgb([over_white(r), over_white(g), over_white(b)])
        })
    }

    fn encode(rgb: &RgbImage, quality: u8) -> Option<Vec<u8>> {
        let mut jpeg = Vec::with_capacity(PREVIEW_MAX_BYTES);
        // A fresh encoder carries no EXIF or ICC unless asked to: none is set.
        JpegEncoder::new_with_quality(&mut jpeg, quality)
            .encode_image(rgb)
            .ok()?;
        Some(jpeg)
    }
}

#[cfg(all(test, feature = "previews"))]
mod tests {
    use super::*;
    use image::codecs::jpeg::JpegEncoder;
    use image::{ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

    const MARKER: &[u8] = b"GPSLatitude=48.858370N;GPSLongitude=2.294481E;MISSIVE-GPS-MARKER";

    /// A photo-like picture: gradients plus a pattern, so the JPEG has real content.
    fn photo(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let stripe = if (x / 40 + y / 40) % 2 == 0 { 40 } else { 0 };
            Rgb([
                (x * 255 / width) as u8,
                (y * 255 / height) as u8,
                (128 + stripe) as u8,
            ])
        })
    }

    /// An APP1 EXIF segment (big-endian TIFF, one IFD) with an optional orientation entry
    /// and the marker string after the IFD, where a GPS IFD's strings would sit.
    fn exif_app1(orientation: Option<u16>) -> Vec<u8> {
        let mut tiff = b"MM\x00\x2A\x00\x00\x00\x08".to_vec();
        let entries: &[u8] = &match orientation {
            Some(o) => {
                let mut entry = vec![0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1];
                entry.extend_from_slice(&o.to_be_bytes());
                entry.extend_from_slice(&[0, 0]);
                entry
            }
            None => Vec::new(),
        };
        tiff.extend_from_slice(&((entries.len() / 12) as u16).to_be_bytes());
        tiff.extend_from_slice(entries);
        tiff.extend_from_slice(&[0, 0, 0, 0]);
        tiff.extend_from_slice(MARKER);
        let mut payload = b"Exif\x00\x00".to_vec();
        payload.extend_from_slice(&tiff);
        let mut segment = vec![0xFF, 0xE1];
        segment.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        segment.extend_from_slice(&payload);
        segment
    }

    fn jpeg_with_exif(width: u32, height: u32, orientation: Option<u16>) -> Vec<u8> {
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&photo(width, height))
            .unwrap();
        assert_eq!(&jpeg[..2], b"\xFF\xD8");
        // Right after SOI, where cameras put it.
        let app1 = exif_app1(orientation);
        jpeg.splice(2..2, app1);
        jpeg
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn decodes_as(preview: &Preview) -> (u32, u32) {
        let image = image::load_from_memory_with_format(&preview.jpeg, ImageFormat::Jpeg).unwrap();
        (image.width(), image.height())
    }

    #[test]
    fn a_photo_preview_is_small_and_carries_no_exif() {
        let source = jpeg_with_exif(2000, 1000, None);
        assert!(
            contains(&source, MARKER),
            "the test photo carries the marker"
        );
        let preview = preview(&source).expect("a preview");
        assert_eq!((preview.width, preview.height), (320, 160));
        assert!(preview.jpeg.len() <= PREVIEW_MAX_BYTES, "{preview:?}");
        assert_eq!(decodes_as(&preview), (320, 160));
        assert!(!contains(&preview.jpeg, MARKER), "the GPS marker leaked");
        assert!(
            !contains(&preview.jpeg, b"Exif\0\0"),
            "an EXIF block was written"
        );
    }

    #[test]
    fn the_exif_orientation_is_applied_before_it_is_dropped() {
        // 6: the camera was held upright; the stored pixels are landscape.
        let preview = preview(&jpeg_with_exif(2000, 1000, Some(6))).expect("a preview");
        assert_eq!((preview.width, preview.height), (160, 320));
        assert_eq!(decodes_as(&preview), (160, 320));
    }

    #[test]
    fn png_with_transparency_becomes_jpeg_on_white_and_is_never_enlarged() {
        let rgba = RgbaImage::from_fn(100, 50, |x, _| {
            if x < 50 {
                Rgba([0, 0, 0, 0])
            } else {
                Rgba([200, 0, 0, 255])
            }
        });
        let mut png = Vec::new();
        rgba.write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let preview = preview(&png).expect("a preview");
        assert_eq!((preview.width, preview.height), (100, 50));
        let decoded = image::load_from_memory_with_format(&preview.jpeg, ImageFormat::Jpeg)
            .unwrap()
            .to_rgb8();
        let Rgb([r, g, b]) = *decoded.get_pixel(10, 25);
        assert!(
            r > 240 && g > 240 && b > 240,
            "transparent became {r},{g},{b}"
        );
    }

    /// Rewrites the frame header's declared size; the scan data stays that of a small image,
    /// which the lenient decoder would happily stretch into a huge allocation.
    fn declaring(width: u16, height: u16) -> Vec<u8> {
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 80)
            .encode_image(&photo(64, 64))
            .unwrap();
        let sof = jpeg
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("a baseline frame header");
        jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
        jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
        jpeg
    }

    #[test]
    fn oversized_declarations_get_no_preview() {
        assert!(
            preview(&declaring(64, 64)).is_some(),
            "the unpatched photo works"
        );
        assert_eq!(preview(&declaring(13_000, 100)), None, "a side over 12,000");
        assert_eq!(preview(&declaring(11_000, 6_000)), None, "66 Mpx");
    }

    #[test]
    fn other_or_broken_files_get_no_preview() {
        assert_eq!(preview(b""), None);
        assert_eq!(preview(b"%PDF-1.7\n"), None);
        assert_eq!(preview(b"GIF89a\x01\0\x01\0"), None, "only JPEG and PNG");
        let jpeg = jpeg_with_exif(200, 100, None);
        assert_eq!(preview(&jpeg[..40]), None, "cut inside the headers");
    }
}
