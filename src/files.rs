//! Opening the files a user names (model files, data files, images, the files of image folders): only regular
//! files, after following symbolic links, and read with a bound. A device or a FIFO has length 0, so it passed
//! every size check: `/dev/zero` never ends and a FIFO blocks the reader until something writes to it (forever).

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// What kind of file `path` is, in words, where it is not a regular file.
fn kind(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// The error for a file that is not a regular one: `is not a regular file (a FIFO)`.
fn not_regular(t: std::fs::FileType) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("is not a regular file ({})", kind(t)),
    )
}

/// Opens `path` for reading if it is a regular file (after following symbolic links), and returns it with its
/// length; anything else (a device, a FIFO, a socket, a directory) is refused before it is opened, so that a FIFO
/// cannot block the open. The caller adds the file's name to the error.
pub fn open_regular(path: &Path) -> io::Result<(File, u64)> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    let file = File::open(path)?;
    // Checked again on what was opened: the path may have been replaced meanwhile.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular(meta.file_type()));
    }
    Ok((file, meta.len()))
}

/// Reads what is left of `file`, at most `limit` bytes: a file that holds more (one that grew after its length
/// was checked) is an error, found after reading `limit + 1` bytes and no more.
pub fn read_limited(file: File, limit: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("holds more than the {limit}-byte limit (it grew while being read)"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read_and_never_past_the_limit() {
        let err = open_regular(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "is not a regular file (a character device)");
        let err = open_regular(Path::new("/")).unwrap_err().to_string();
        assert_eq!(err, "is not a regular file (a directory)");
        let dir = std::env::temp_dir().join(format!("resnet-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("x.png");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = open_regular(&fifo).unwrap_err().to_string();
        assert_eq!(err, "is not a regular file (a FIFO)");
        let file = dir.join("f");
        std::fs::write(&file, [7u8; 10]).unwrap();
        let (f, len) = open_regular(&file).unwrap();
        assert_eq!(len, 10);
        assert_eq!(read_limited(f, 10).unwrap(), [7u8; 10]);
        let (f, _) = open_regular(&file).unwrap();
        assert!(read_limited(f, 9)
            .unwrap_err()
            .to_string()
            .contains("more than the 9-byte limit"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
