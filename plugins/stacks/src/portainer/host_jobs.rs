//! Scripts run on an endpoint's host, as 1.x's host management ran them
//! (`POST /api/endpoints/{id}/job`): in a privileged container of the
//! given image, with the host's root at `/host`, started and left for
//! its logs to be read through the proxy.

use berth_sdk::{HttpResult, Request, Response, docker, percent_encode, time};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::portainer::endpoints::{Endpoint, field, field_text, find_endpoint, form_fields};
use crate::portainer::users::User;
use crate::portainer::{Payload, fail, payload};

/// `?method=string`: the script's text.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct JobFromText {
    image: String,
    file_content: String,
}

impl Payload for JobFromText {
    fn validate(&self) -> Result<(), &'static str> {
        if self.file_content.is_empty() {
            return Err("Invalid script file content");
        }
        if self.image.is_empty() {
            return Err("Invalid image name");
        }
        Ok(())
    }
}

/// `POST /api/endpoints/{id}/job?method=string|file` (administrators):
/// the image is pulled unless the engine has it (1.x always pulled), the
/// container made and given `/tmp/script.sh`, then started; 204.
pub fn endpoint_job(req: &Request, user: &User) -> HttpResult {
    let e = find_endpoint(req, user)?;
    e.ready()?;
    let invalid = |details: &str| fail(400, "Invalid request payload", details);
    let (image, script) = match req.query("method").unwrap_or_default() {
        "string" => {
            let body: JobFromText = payload(req)?;
            (body.image, body.file_content.into_bytes())
        }
        "file" => {
            let fields = form_fields(req)?;
            let script = field(&fields, "File")
                .filter(|f| !f.is_empty())
                .ok_or_else(|| {
                    invalid("Invalid Script file. Ensure that the file is uploaded correctly")
                })?
                .to_vec();
            let image = field_text(&fields, "Image")
                .filter(|i| !i.is_empty())
                .ok_or_else(|| invalid("Invalid image name"))?;
            (image, script)
        }
        "" => return Err(fail(400, "Invalid query parameter: method", "")),
        _ => {
            return Err(fail(
                400,
                "Invalid value for query parameter: method. Value must be one of: string or file",
                "",
            ));
        }
    };
    run_script(&e, &image, &script)
        .map_err(|details| fail(500, "Failed executing job", &details))?;
    Ok(Response::new(204))
}

fn run_script(e: &Endpoint, image: &str, script: &[u8]) -> Result<(), String> {
    let call = |method: &str, path: &str, query: &str, body: &[u8]| {
        let headers = [("content-type".to_string(), "application/json".to_string())];
        let answer = docker::request(&e.docker, method, path, query, &headers, body)
            .map_err(|err| docker::error_text(&err))?;
        if (200..300).contains(&answer.status) {
            Ok(answer.body)
        } else {
            Err(format!(
                "{method} {path}: {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body).trim()
            ))
        }
    };
    let here = docker::request(
        &e.docker,
        "GET",
        &format!("/images/{}/json", percent_encode(image)),
        "",
        &[],
        &[],
    )
    .map_err(|err| docker::error_text(&err))?;
    if here.status != 200 {
        call(
            "POST",
            "/images/create",
            &format!("fromImage={}", percent_encode(image)),
            &[],
        )?;
    }
    let config = json!({
        "Image": image,
        "AttachStdin": true,
        "AttachStdout": true,
        "AttachStderr": true,
        "Tty": true,
        "WorkingDir": "/tmp",
        "Cmd": ["sh", "/tmp/script.sh"],
        "Labels": { "io.portainer.job.endpoint": e.id.to_string() },
        "HostConfig": {
            "Binds": ["/:/host", "/etc:/etc:ro", "/usr:/usr:ro", "/run:/run:ro", "/sbin:/sbin:ro", "/var:/var:ro"],
            "NetworkMode": "host",
            "Privileged": true,
        },
    });
    let made = call(
        "POST",
        "/containers/create",
        "",
        config.to_string().as_bytes(),
    )?;
    let made: Value = serde_json::from_slice(&made).map_err(|err| err.to_string())?;
    let id = made["Id"]
        .as_str()
        .ok_or("the engine gave no container id")?;
    let archive = tar_one("script.sh", 0o700, script);
    call(
        "PUT",
        &format!("/containers/{id}/archive"),
        "path=/tmp",
        &archive,
    )?;
    call("POST", &format!("/containers/{id}/start"), "", &[])?;
    Ok(())
}

/// A tar archive of one file.
fn tar_one(name: &str, mode: u32, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    };
    octal(&mut header[100..108], u64::from(mode));
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], content.len() as u64);
    octal(&mut header[136..148], time::now_secs());
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum counts its own field as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut tar = header.to_vec();
    tar.extend_from_slice(content);
    tar.resize(tar.len().div_ceil(512) * 512, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tar_of_one_file_has_a_valid_header() {
        let tar = tar_one("script.sh", 0o700, b"echo hi\n");
        assert_eq!(tar.len(), 512 + 512 + 1024);
        assert_eq!(&tar[..9], b"script.sh");
        assert_eq!(&tar[100..108], b"0000700\0");
        assert_eq!(&tar[124..136], b"00000000010\0");
        let stored: u32 =
            u32::from_str_radix(std::str::from_utf8(&tar[148..154]).unwrap(), 8).unwrap();
        let mut header = tar[..512].to_vec();
        header[148..156].copy_from_slice(b"        ");
        assert_eq!(stored, header.iter().map(|b| u32::from(*b)).sum::<u32>());
        assert_eq!(&tar[512..520], b"echo hi\n");
    }
}
