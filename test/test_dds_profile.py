"""The Fast DDS profile for large images (config/fastdds_large_images.xml): valid, used by scripts/env.sh
and the launch file, and effective: a 1080p rgb8 image crosses processes through a shared-memory segment
of the profile's size."""
import os
import subprocess
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import PEERS_DIR, REPO_ROOT

PROFILE = REPO_ROOT / 'config' / 'fastdds_large_images.xml'
NS = {'dds': 'http://www.eprosima.com'}
FULL_HD_RGB8_BYTES = 1920 * 1080 * 3


def _profile_numbers():
    root = ET.parse(PROFILE).getroot()
    transports = {d.findtext('dds:transport_id', namespaces=NS): d
                  for d in root.iterfind('.//dds:transport_descriptor', NS)}
    (participant,) = root.iterfind('.//dds:participant', NS)
    return transports, participant


def test_profile_gives_shared_memory_room_for_full_hd_images_and_keeps_udp_for_discovery():
    transports, participant = _profile_numbers()
    assert participant.get('is_default_profile') == 'true'   # what rmw_fastrtps picks up without code
    used = [t.text for t in participant.iterfind('.//dds:userTransports/dds:transport_id', NS)]
    assert {transports[name].findtext('dds:type', namespaces=NS) for name in used} == {'SHM', 'UDPv4'}
    assert participant.findtext('.//dds:useBuiltinTransports', namespaces=NS) == 'false'
    (shm,) = [transports[name] for name in used if transports[name].findtext('dds:type', namespaces=NS) == 'SHM']
    segment = int(shm.findtext('dds:segment_size', namespaces=NS))
    max_message = int(shm.findtext('dds:maxMessageSize', namespaces=NS))
    assert FULL_HD_RGB8_BYTES < max_message <= segment
    assert segment >= 2 * FULL_HD_RGB8_BYTES   # more than one frame in flight per reader


def _env_sh_profile(preset=None):
    setup = ('unset FASTDDS_DEFAULT_PROFILES_FILE; ' if preset is None
             else f'export FASTDDS_DEFAULT_PROFILES_FILE={preset}; ')
    out = subprocess.run(['bash', '-c', setup + f'source {REPO_ROOT}/scripts/env.sh >/dev/null; '
                          'echo "$FASTDDS_DEFAULT_PROFILES_FILE"'],
                         env={k: v for k, v in os.environ.items() if k != 'RMW_IMPLEMENTATION'},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_env_sh_uses_the_profile_unless_the_user_set_one():
    assert _env_sh_profile() == str(PROFILE)
    assert _env_sh_profile('/opt/robot/my_dds.xml') == '/opt/robot/my_dds.xml'


def test_launch_file_gives_the_node_process_the_profile():
    source = (REPO_ROOT / 'launch' / 'ckd_tracker.launch.py').read_text()
    assert "DeclareLaunchArgument('fastdds_profile'" in source
    assert "EnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE'" in source   # the user's own setting wins
    assert "additional_env={'FASTDDS_DEFAULT_PROFILES_FILE': LaunchConfiguration('fastdds_profile')," in source
    # (test_launch_real.py reads the launched node's environment where launch_ros is installed)
    assert "'/config/fastdds_large_images.xml'" in source and 'install(DIRECTORY launch config rviz' in (
        REPO_ROOT / 'CMakeLists.txt').read_text()


def _large_segments():
    segments = set()
    for name in os.listdir('/dev/shm'):
        path = os.path.join('/dev/shm', name)
        try:
            if name.startswith('fastdds_') and os.stat(path).st_size >= 32 * 1024 * 1024:
                segments.add(name)
        except FileNotFoundError:
            pass
    return segments


@pytest.mark.ros
@pytest.mark.skipif(not os.path.isdir('/dev/shm'), reason='Fast DDS shared memory needs /dev/shm')
def test_full_hd_images_cross_processes_through_the_profiles_shared_memory(rclpy_context, spawn_process):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    # This process's own participant (with the profile from env.sh) exists before the peer starts: only
    # segments that appear afterwards are the peer's.
    node = rclpy.create_node('dds_profile_test', namespace='/dds_profile', context=rclpy_context)
    received, segments_seen = [], set()
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, 'rgb/image', received.append, qos)
    node.create_subscription(Image, 'thermal/image', lambda msg: None, qos)   # the peer waits for both
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    time.sleep(0.5)
    before = _large_segments()
    peer = spawn_process([PEERS_DIR / 'rgbt_camera_peer.py', '--namespace', '/dds_profile', '--frames', '6',
                          '--rate', '5', '--thermal-every', '1', '--size', '1920x1080', '--thermal-size', '640x512',
                          '--rgb-encodings', 'rgb8', '--thermal-encodings', 'mono16', '--qos', 'reliable',
                          '--cycle', '2', '--wait-subscribers', '60', '--linger', '2'],
                         FASTDDS_DEFAULT_PROFILES_FILE=PROFILE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(received) < 6 and peer.poll() is None:
            executor.spin_once(timeout_sec=0.05)
            segments_seen |= _large_segments() - before
    finally:
        executor.shutdown()
        node.destroy_node()
    peer.wait(timeout=30)
    log = peer.stdout.read()
    assert 'XMLPARSER' not in log and 'Error' not in log, log
    assert len(received) == 6, f'{len(received)} of 6 full-HD frames arrived\n{log}'
    for msg in received:
        assert (msg.width, msg.height, msg.encoding, msg.step) == (1920, 1080, 'rgb8', 1920 * 3)
        image = np.frombuffer(msg.data, np.uint8)
        assert image.size == FULL_HD_RGB8_BYTES and image.std() > 1   # whole, rendered frames
    # The peer mapped a shared-memory segment of the profile's size (the default is 512 KiB).
    assert segments_seen, 'no 32 MiB Fast DDS segment appeared: the profile was not applied'
