"""Start the CKD tracker lifecycle node and drive it to active (Humble, Jazzy, Kilted).

    ros2 launch ckd_ros ckd_tracker.launch.py rgb_topic:=/camera/color/image_raw \
        thermal_topic:=/thermal/image_raw device:=cuda use_rviz:=true

The node is a lifecycle node: this file emits `configure` once the process is up and `activate`
when it reaches `inactive` (event handlers; portable to distributions whose launch_ros has no
`autostart` argument), so the node's own `autostart` parameter stays false here.

When the node process exits (a crash, a kill), the whole launch shuts down (like ROS 1's
`required="true"`), so a supervisor (systemd, a container runtime) sees it end instead of a launch
that looks healthy without its node; launch itself still exits 0 (it has no way to pass the node's
failure on), its log names the node's exit code.  With `respawn:=true` launch restarts the node instead (after
`respawn_delay` seconds); a restarted node brings itself to active (`autostart`), as the
configure/activate events of this file are sent only once.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import EnvironmentVariable, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

from ckd_ros.ros.node_command import LAUNCH_PARAMETER_ARGUMENTS, launch_parameter_overrides

PACKAGE = 'ckd_ros'
EXECUTABLE = 'ckd_tracker_node'


def generate_launch_description():
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument('namespace', default_value='', description='namespace of the node and its topics'),
        DeclareLaunchArgument('node_name', default_value='ckd_tracker', description='name of the node'),
        DeclareLaunchArgument('params_file', default_value=PathJoinSubstitution([share, 'config', 'ckd_tracker.yaml']),
                              description='parameter file (config/ckd_tracker.yaml documents every parameter)'),
        DeclareLaunchArgument('rgb_topic', default_value='rgb/image', description='RGB sensor_msgs/Image topic'),
        DeclareLaunchArgument('thermal_topic', default_value='thermal/image',
                              description='thermal sensor_msgs/Image topic'),
        # '' = the value of params_file (the shipped file: auto, ckd_tiny, the configuration's weights)
        DeclareLaunchArgument('device', default_value='',
                              description="'auto', 'cpu', 'cuda' or 'cuda:N'; '' = params_file's value"),
        DeclareLaunchArgument('checkpoint', default_value='',
                              description="weights file; '' = params_file's value (shipped file: the model "
                                          "configuration's default weights)"),
        DeclareLaunchArgument('model_config', default_value='',
                              description="ckd_tiny, ckd_small, an official CKD config name, or a YAML path; "
                                          "'' = params_file's value"),
        DeclareLaunchArgument('use_rviz', default_value='false', description='start RViz with rviz/ckd_tracker.rviz'),
        DeclareLaunchArgument('respawn', default_value='false',
                              description='true: restart the node when it exits (it then activates itself); '
                                          'false: shut the launch down when the node exits'),
        DeclareLaunchArgument('respawn_delay', default_value='2.0',
                              description='seconds before a respawned node is started again'),
        # Images over Fast DDS shared memory need a segment larger than the default 512 KiB; the camera
        # drivers should use the same file (README: "Large images over Fast DDS").  A profile already set
        # in the environment wins.
        DeclareLaunchArgument('fastdds_profile',
                              default_value=EnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', default_value=[
                                  share, '/config/fastdds_large_images.xml']),
                              description='Fast DDS XML profile of the node process (FASTDDS_DEFAULT_PROFILES_FILE)'),
    ]
    rviz = Node(
        package='rviz2', executable='rviz2', name='ckd_tracker_rviz', output='screen',
        arguments=['-d', PathJoinSubstitution([share, 'rviz', 'ckd_tracker.rviz'])],
        condition=IfCondition(LaunchConfiguration('use_rviz')),
    )
    # The node is made once the arguments are known: only the given ones override params_file.
    return LaunchDescription([*arguments, OpaqueFunction(function=_tracker_actions), rviz])


def _tracker_actions(context):
    given = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_PARAMETER_ARGUMENTS}
    respawn = _true(LaunchConfiguration('respawn').perform(context), 'respawn')
    if respawn:
        # launch's configure/activate events go out once; a restarted process must activate itself
        exit_behaviour = dict(respawn=True, respawn_delay=float(LaunchConfiguration('respawn_delay').perform(context)))
    else:
        exit_behaviour = dict(on_exit=_shut_down_unless_shutting_down)
    tracker = LifecycleNode(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=LaunchConfiguration('node_name'),
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        # OpenMP reads OMP_WAIT_POLICY when torch loads: idle threads sleep instead of spinning on a CPU
        # shared with the camera drivers (README: Performance, auto). A value already set wins.
        additional_env={'FASTDDS_DEFAULT_PROFILES_FILE': LaunchConfiguration('fastdds_profile'),
                        'OMP_WAIT_POLICY': EnvironmentVariable('OMP_WAIT_POLICY', default_value='PASSIVE')},
        # autostart false unless respawning: this file drives the lifecycle
        parameters=[LaunchConfiguration('params_file'), launch_parameter_overrides(given, autostart=respawn)],
        remappings=[
            ('rgb/image', LaunchConfiguration('rgb_topic')),
            ('thermal/image', LaunchConfiguration('thermal_topic')),
        ],
        **exit_behaviour,
    )
    if respawn:
        return [tracker]
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(tracker),
                                            transition_id=Transition.TRANSITION_CONFIGURE))
    # start_state 'configuring': only after configure. A handler on goal 'inactive' alone also fired after
    # `ros2 lifecycle set ... deactivate` (deactivating -> inactive) and activated the node again at once.
    activate_when_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=tracker, start_state='configuring', goal_state='inactive',
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(tracker),
                                              transition_id=Transition.TRANSITION_ACTIVATE))]))
    # The handler is registered before the node starts so that no transition event is missed.
    return [activate_when_inactive, tracker, configure]


def _shut_down_unless_shutting_down(event, context):
    """on_exit of the node: shut the launch down, unless it is already (Ctrl-C), where a second shutdown
    made launch_ros fail ('Cannot shutdown a ROS adapter that is not running') and exit 1."""
    if context.is_shutdown:
        return None
    return [Shutdown(reason=f'the ckd_tracker node exited (code {event.returncode})')]


def _true(text, name):
    if text.strip().lower() in ('true', '1', 'yes'):
        return True
    if text.strip().lower() in ('false', '0', 'no'):
        return False
    raise ValueError(f"launch argument {name} must be true or false, got '{text}'")
