//! The package clients (`apt-get`, `dpkg-deb`, `npm`, `pip`): finding them and running them.

use super::*;

/// A program to run, with leading arguments (`python3 -m pip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// The executable.
    pub program: PathBuf,
    /// Arguments placed before the command's own.
    pub prefix_args: Vec<OsString>,
}

impl Tool {
    fn plain(program: PathBuf) -> Self {
        Self {
            program,
            prefix_args: Vec::new(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.prefix_args);
        c
    }
}

/// The package clients available for fetching; `None` where a client is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Clients {
    /// `apt-get`.
    pub apt_get: Option<Tool>,
    /// `dpkg-deb` (unpacks `.deb` files).
    pub dpkg_deb: Option<Tool>,
    /// `npm`.
    pub npm: Option<Tool>,
    /// `pip3`, `pip` or `python3 -m pip`.
    pub pip: Option<Tool>,
}

/// Finds an executable called `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
pub(super) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
pub(super) fn is_executable(p: &Path) -> bool {
    p.is_file()
}

impl Clients {
    /// Looks the clients up on `PATH`.
    pub fn discover() -> Self {
        let pip = find_on_path("pip3")
            .or_else(|| find_on_path("pip"))
            .map(Tool::plain)
            .or_else(|| {
                find_on_path("python3").map(|p| Tool {
                    program: p,
                    prefix_args: vec!["-m".into(), "pip".into()],
                })
            });
        Self {
            apt_get: find_on_path("apt-get").map(Tool::plain),
            dpkg_deb: find_on_path("dpkg-deb").map(Tool::plain),
            npm: find_on_path("npm").map(Tool::plain),
            pip,
        }
    }

    /// No client at all (only archives already in the cache can be used).
    pub fn none() -> Self {
        Self::default()
    }
}

pub(super) fn require<'a>(tool: &'a Option<Tool>, client: &str, hint: &str) -> Result<&'a Tool> {
    tool.as_ref().ok_or_else(|| DataError::ClientNotFound {
        client: client.to_owned(),
        hint: hint.to_owned(),
    })
}

pub(super) const APT_HINT: &str = "Fashion-MNIST, the fonts and the clip-art ship as Debian packages: a Debian-based system with apt-get is needed";
pub(super) const DPKG_HINT: &str =
    "install dpkg (it unpacks the Debian packages of Fashion-MNIST, the fonts and the clip-art)";
pub(super) const NPM_HINT: &str = "install Node.js/npm";
pub(super) const PIP_HINT: &str = "install Python 3 with pip";

pub(super) fn command_line(tool: &Tool, args: &[&str]) -> String {
    let mut parts: Vec<String> = vec![tool.program.display().to_string()];
    parts.extend(
        tool.prefix_args
            .iter()
            .map(|a| a.to_string_lossy().into_owned()),
    );
    parts.extend(args.iter().map(|a| (*a).to_owned()));
    parts.join(" ")
}

pub(super) fn run_tool(tool: &Tool, args: &[&str], cwd: &Path) -> Result<()> {
    let line = command_line(tool, args);
    let out = tool
        .command()
        .args(args)
        .current_dir(cwd)
        .output()
        .map_err(|e| DataError::ClientFailed {
            command: line.clone(),
            status: "could not start".into(),
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(DataError::ClientFailed {
        command: line,
        status: out.status.to_string(),
        stderr: tail.join("\n"),
    })
}

pub(super) fn download(
    packages: &Path,
    spec: &PackageSpec,
    names: &[&str],
    clients: &Clients,
    progress: &dyn Fn(&FetchEvent),
) -> Result<()> {
    let source = spec.source;
    let announce = |tool: &Tool, args: &[&str]| {
        progress(&FetchEvent::Downloading {
            source,
            command: command_line(tool, args),
        });
    };
    let (tool, args) = match spec.client {
        Client::Apt => {
            let apt = require(&clients.apt_get, "apt-get", APT_HINT)?;
            require(&clients.dpkg_deb, "dpkg-deb", DPKG_HINT)?;
            let args = client_command(&["download"], spec, names);
            announce(apt, &args);
            if run_tool(apt, &args, packages).is_err() {
                // The package lists may be missing or stale: refresh them once.
                announce(apt, &["update"]);
                run_tool(apt, &["update"], packages)?;
                run_tool(apt, &args, packages)?;
            }
            return Ok(());
        }
        Client::Npm => (
            require(&clients.npm, "npm", NPM_HINT)?,
            client_command(&["pack"], spec, &[spec.requirement]),
        ),
        Client::Pip => (
            require(&clients.pip, "pip", PIP_HINT)?,
            client_command(
                &[
                    "download",
                    "--no-deps",
                    "--disable-pip-version-check",
                    "-d",
                    ".",
                ],
                spec,
                &[spec.requirement],
            ),
        ),
    };
    announce(tool, &args);
    run_tool(tool, &args, packages)
}

/// A client's own arguments `own`, then the package's `client_args`, then `what` (the
/// package names or the requirement).
pub(super) fn client_command<'a>(
    own: &[&'a str],
    spec: &PackageSpec,
    what: &[&'a str],
) -> Vec<&'a str> {
    let mut args = own.to_vec();
    args.extend_from_slice(spec.client_args);
    args.extend_from_slice(what);
    args
}
