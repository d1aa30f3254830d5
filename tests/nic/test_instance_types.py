"""The shipped instance table and its lookup (both spellings), and config overrides."""
from agent.nic.instance_types import InstanceTable, normalize

# (name as an operator might write it, required queues or None) straight from the instance-type slides.
SLIDE_TABLE = {
    "ecs.ga1.2xlarge": None, "ecs.ga1.4xlarge": 2, "ecs.ga1.8xlarge": 3, "ecs.ga1.14xlarge": 4,
    "gn4-c4g1.xlarge": None, "gn4-c8g1.2xlarge": None, "gn4.8xlarge": 3, "gn4-c4g1.2xlarge": None,
    "gn4-c8g1.4xlarge": None, "ecs.gn4.14xlarge": 4,
    "gn5-c4g1.xlarge": None, "gn5-c8g1.2xlarge": None, "gn5-c4g1.2xlarge": None, "gn5-c8g1.4xlarge": None,
    "gn5-c8g1.8xlarge": 3, "gn5-c8g1.14xlarge": 4,
}


def test_every_slide_type_has_the_slides_queue_requirement():
    table = InstanceTable.load()
    assert len(table.names()) == len(SLIDE_TABLE)
    for name, queues in SLIDE_TABLE.items():
        entry = table.lookup(name)
        assert entry is not None, name
        assert entry.required == queues, name


def test_lookup_accepts_names_with_and_without_the_ecs_prefix_and_any_case():
    table = InstanceTable.load()
    for name in SLIDE_TABLE:
        bare = name.removeprefix("ecs.")
        assert table.lookup(bare) == table.lookup("ecs." + bare) == table.lookup(("ECS." + bare).upper())


def test_unknown_type_is_none():
    assert InstanceTable.load().lookup("ecs.gn7.nonexistent") is None


def test_override_replaces_the_requirement_and_keeps_the_rated_figures():
    table = InstanceTable.load({"ecs.gn5-c8g1.4xlarge": 2})
    entry = table.lookup("gn5-c8g1.4xlarge")
    assert (entry.required, entry.source, entry.max_pps) == (2, "config", 400000)


def test_override_adds_a_new_type_and_zero_means_no_requirement():
    table = InstanceTable.load({"ecs.gn6i-c4g1.xlarge": 2, "gn5-c8g1.14xlarge": 0})
    assert table.lookup("gn6i-c4g1.xlarge").required == 2
    assert table.lookup("ecs.gn5-c8g1.14xlarge").required is None


def test_normalize_strips_only_a_leading_prefix():
    assert normalize(" ECS.gn5.x ") == "gn5.x"
    assert normalize("gn5.ecs.x") == "gn5.ecs.x"
