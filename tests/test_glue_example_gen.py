"""GlueExampleGen: every task's exact GLUE file format, the artifact layout, the real files and bad data."""
import glob
import logging
import os
import re
from typing import Dict, List, Tuple, Union

import pytest
import tensorflow as tf
from conftest import glue_dir_or_skip
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from components.glue_example_gen import GlueExampleGen, download, executor
from modules.glue import FEATURE_INDEX, FEATURE_LABEL, FEATURE_TEXT_A, FEATURE_TEXT_B, TASKS, get_task

Label = Union[int, float, None]
Row = Tuple[str, str, Label, int]  # text_a, text_b, label (None: unlabeled), idx

BOM = "\ufeff"
MNLI_PARSES = "( ( The cat ) sat )\t( cats ( sat ) )\t(ROOT (S (NP The cat) (VP sat)))\t(ROOT (S (NP cats) (VP sat)))"

# Per task: file name -> (exact file content in its GLUE format, the rows it must produce).
FIXTURES: Dict[str, Dict[str, Tuple[str, List[Row]]]] = {
    "cola": {
        "train.tsv": (
            "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
            "gj04\t0\t*\tThey drank the pub.\n",
            [("Our friends won't buy this analysis, let alone the next one we propose.", "", 1, 0),
             ("They drank the pub.", "", 0, 1)],
        ),
        "dev.tsv": (  # no final newline, as the real file
            'cj99\t1\t\tHe said "hello" to "them".\nbc01\t0\t*\tThe more I read.',
            [('He said "hello" to "them".', "", 1, 0), ("The more I read.", "", 0, 1)],
        ),
        "test.tsv": (
            "index\tsentence\n0\tBill whistled past the house.\n1\t\"Quoted\" start.\n",
            [("Bill whistled past the house.", "", None, 0), ('"Quoted" start.', "", None, 1)],
        ),
    },
    "sst2": {
        "train.tsv": (
            "sentence\tlabel\nhide new secretions from the parental units \t0\nthe \"best\" film 's moment \t1\n",
            [("hide new secretions from the parental units ", "", 0, 0), ('the "best" film \'s moment ', "", 1, 1)],
        ),
        "dev.tsv": (
            "sentence\tlabel\nit 's a charming journey . \t1\n",
            [("it 's a charming journey . ", "", 1, 0)],
        ),
        "test.tsv": (
            "index\tsentence\n0\tuneasy mishmash of styles .\n1\ta poor -- if durable -- imitation .\n",
            [("uneasy mishmash of styles .", "", None, 0), ("a poor -- if durable -- imitation .", "", None, 1)],
        ),
    },
    "mrpc": {
        "train.tsv": (
            BOM + "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
            '1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " , of distorting .\t'
            'Referring to him as only " the witness " , Amrozi accused his brother .\n'
            "0\t2108705\t2108831\tYucaipa owned Dominick 's .\tYucaipa bought Dominick 's in 1995 .\n",
            [('Amrozi accused his brother , whom he called " the witness " , of distorting .',
              'Referring to him as only " the witness " , Amrozi accused his brother .', 1, 0),
             ("Yucaipa owned Dominick 's .", "Yucaipa bought Dominick 's in 1995 .", 0, 1)],
        ),
        "dev.tsv": (
            BOM + "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
            "1\t1355540\t1355592\tHe said the pie business does n't fit .\t\" The pie business does not fit .\n",
            [("He said the pie business does n't fit .", '" The pie business does not fit .', 1, 0)],
        ),
        "test.tsv": (
            "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
            "0\t1089874\t1089925\tPCCW 's chief will report to Mr So .\tThe chief will report to So .\n",
            [("PCCW 's chief will report to Mr So .", "The chief will report to So .", None, 0)],
        ),
    },
    "stsb": {
        "train.tsv": (
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
            "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off.\t5.000\n"
            "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man plays a \"large\" flute.\tA man is playing a flute.\t3.800\n",
            [("A plane is taking off.", "An air plane is taking off.", 5.0, 0),
             ('A man plays a "large" flute.', "A man is playing a flute.", 3.8, 1)],
        ),
        "dev.tsv": (
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
            "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man is dancing.\tA man wearing a hat is dancing.\t0.000\n",
            [("A man is dancing.", "A man wearing a hat is dancing.", 0.0, 0)],
        ),
        "test.tsv": (
            "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\n"
            "0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl is styling her hair.\tA girl is brushing her hair.\n",
            [("A girl is styling her hair.", "A girl is brushing her hair.", None, 0)],
        ),
    },
    "qqp": {
        "train.tsv": (
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
            "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration is enough?\t0\n"
            '402555\t536040\t536041\tHow do I control my "horny" emotions?\tHow do you control your horniness?\t1\n',
            [("How is the life of a math student?", "Which level of prepration is enough?", 0, 133273),
             ('How do I control my "horny" emotions?', "How do you control your horniness?", 1, 402555)],
        ),
        "dev.tsv": (
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
            "201359\t303345\t303346\tWhy are African-Americans so beautiful?\tWhy are hispanics so beautiful?\t0\n",
            [("Why are African-Americans so beautiful?", "Why are hispanics so beautiful?", 0, 201359)],
        ),
        "test.tsv": (
            "id\tquestion1\tquestion2\n0\tWould the idea of Trump work?\tWill Trump be impeached?\n",
            [("Would the idea of Trump work?", "Will Trump be impeached?", None, 0)],
        ),
    },
    "mnli": {
        "train.tsv": (  # 12 columns
            "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
            "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
            f"0\t31193\t31193n\tgovernment\t{MNLI_PARSES}\tThe \"cat\" sat.\tCats sat.\tneutral\tneutral\n"
            f"1\t101457\t101457e\ttelephone\t{MNLI_PARSES}\tyou know during the season\tYou lose the things.\tentailment\tentailment\n",
            [('The "cat" sat.', "Cats sat.", 2, 0), ("you know during the season", "You lose the things.", 1, 1)],
        ),
        "dev_matched.tsv": (  # 16 columns: five annotator labels, then gold_label
            "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
            "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
            f"0\t63735\t63735n\tslate\t{MNLI_PARSES}\tThe new rights are nice.\tEveryone likes them.\t"
            "neutral\tentailment\tneutral\tneutral\tneutral\tneutral\n",
            [("The new rights are nice.", "Everyone likes them.", 2, 0)],
        ),
        "dev_mismatched.tsv": (
            "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
            "sentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n"
            f"7\t75290\t75290c\tletters\t{MNLI_PARSES}\tYour gift is appreciated.\tHundreds of students.\t"
            "contradiction\tcontradiction\tcontradiction\tcontradiction\tneutral\tcontradiction\n",
            [("Your gift is appreciated.", "Hundreds of students.", 0, 7)],
        ),
        "test_matched.tsv": (  # 10 columns, no labels
            "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
            "sentence2_parse\tsentence1\tsentence2\n"
            f"0\t31493\t31493\ttravel\t{MNLI_PARSES}\tHierbas, ans seco.\tThere is a \"seco\".\n",
            [("Hierbas, ans seco.", 'There is a "seco".', None, 0)],
        ),
        "test_mismatched.tsv": (
            "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
            "sentence2_parse\tsentence1\tsentence2\n"
            f"0\t16130\t16130\tfacetoface\t{MNLI_PARSES}\tWhat have you decided?\tWhat are you doing?\n",
            [("What have you decided?", "What are you doing?", None, 0)],
        ),
        "../diagnostic/diagnostic.tsv": (  # GLUE's diagnostic set (AX), in <data_dir>/diagnostic/
            "index\tsentence1\tsentence2\n0\tThe cat sat on the mat.\tThe cat did not sit on the mat.\n"
            "1\tThe cat did not sit on the mat.\tThe cat sat on the mat.\n",
            [("The cat sat on the mat.", "The cat did not sit on the mat.", None, 0),
             ("The cat did not sit on the mat.", "The cat sat on the mat.", None, 1)],
        ),
    },
    "qnli": {
        "train.tsv": (
            "index\tquestion\tsentence\tlabel\n"
            "0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it.\tnot_entailment\n",
            [("When did the third Digimon series begin?", "Unlike the two seasons before it.", 1, 0)],
        ),
        "dev.tsv": (
            "index\tquestion\tsentence\tlabel\n"
            "0\tWhat came into force after the new constitution was herald?\t"
            "As of that day, the new constitution came into force.\tentailment\n",
            [("What came into force after the new constitution was herald?",
              "As of that day, the new constitution came into force.", 0, 0)],
        ),
        "test.tsv": (
            "index\tquestion\tsentence\n"
            '0\tWhat organization is devoted to Jihad?\tThe Brotherhood took a "quiescent" stance.\n',
            [("What organization is devoted to Jihad?", 'The Brotherhood took a "quiescent" stance.', None, 0)],
        ),
    },
    "rte": {
        "train.tsv": (
            "index\tsentence1\tsentence2\tlabel\n"
            "0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\tnot_entailment\n"
            '2164\t"That film was great," he said.\tHe liked the film.\tentailment\n',
            [("No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.", 1, 0),
             ('"That film was great," he said.', "He liked the film.", 0, 2164)],
        ),
        "dev.tsv": (
            "index\tsentence1\tsentence2\tlabel\n"
            "0\tDana Reeve has died of lung cancer.\tChristopher Reeve had an accident.\tnot_entailment\n",
            [("Dana Reeve has died of lung cancer.", "Christopher Reeve had an accident.", 1, 0)],
        ),
        "test.tsv": (
            "index\tsentence1\tsentence2\n0\tMangla was summoned.\tShukla is related to Mangla.\n",
            [("Mangla was summoned.", "Shukla is related to Mangla.", None, 0)],
        ),
    },
    "wnli": {
        "train.tsv": (
            "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot.\tThe carrot had a hole.\t1\n",
            [("I stuck a pin through a carrot.", "The carrot had a hole.", 1, 0)],
        ),
        "dev.tsv": (
            "index\tsentence1\tsentence2\tlabel\n"
            '0\tThe drain is clogged with hair. It has to be "cleaned".\tThe hair has to be cleaned.\t0\n',
            [('The drain is clogged with hair. It has to be "cleaned".', "The hair has to be cleaned.", 0, 0)],
        ),
        "test.tsv": (
            "index\tsentence1\tsentence2\n0\tMaude and Dora had seen the trains.\tHorses ran away.\n",
            [("Maude and Dora had seen the trains.", "Horses ran away.", None, 0)],
        ),
    },
}

# Data rows of the real files, from /work/shared/glue/SOURCES.md.
REAL_ROWS = {
    ("cola", "train"): 8551, ("cola", "eval"): 1043, ("cola", "test"): 1063,
    ("sst2", "train"): 67349, ("sst2", "eval"): 872, ("sst2", "test"): 1821,
    ("mrpc", "train"): 3668, ("mrpc", "eval"): 408, ("mrpc", "test"): 1725,
    ("stsb", "train"): 5749, ("stsb", "eval"): 1500, ("stsb", "test"): 1379,
    ("qnli", "eval"): 5463, ("qnli", "test"): 5463,
    ("rte", "train"): 2490, ("rte", "eval"): 277, ("rte", "test"): 3000,
    ("wnli", "train"): 635, ("wnli", "eval"): 71, ("wnli", "test"): 146,
}
# Label counts in class-id order, from SOURCES.md: proves labels map to the right ids.
REAL_LABEL_COUNTS = {
    ("sst2", "train"): [29780, 37569], ("mrpc", "train"): [1194, 2474], ("rte", "train"): [1249, 1241],
    ("qnli", "eval"): [2702, 2761], ("cola", "eval"): [322, 721], ("wnli", "train"): [323, 312],
}


def write_task(data_dir: str, task_name: str, skip: Tuple[str, ...] = ()) -> str:
    """Writes one task's fixture files (except those in `skip`) into <data_dir>/<DIR>/ as UTF-8 bytes."""
    task_dir = os.path.join(data_dir, get_task(task_name).directory)
    os.makedirs(task_dir, exist_ok=True)
    for file_name, (content, _) in FIXTURES[task_name].items():
        if file_name not in skip:
            os.makedirs(os.path.dirname(os.path.join(task_dir, file_name)), exist_ok=True)
            with open(os.path.join(task_dir, file_name), "wb") as f:
                f.write(content.encode("utf-8"))
    return data_dir


def make_example(row: Row) -> tf.train.Example:
    text_a, text_b, label, idx = row
    feature = {
        FEATURE_TEXT_A: tf.train.Feature(bytes_list=tf.train.BytesList(value=[text_a.encode("utf-8")])),
        FEATURE_TEXT_B: tf.train.Feature(bytes_list=tf.train.BytesList(value=[text_b.encode("utf-8")])),
        FEATURE_INDEX: tf.train.Feature(int64_list=tf.train.Int64List(value=[idx])),
    }
    if isinstance(label, float):
        feature[FEATURE_LABEL] = tf.train.Feature(float_list=tf.train.FloatList(value=[label]))
    elif label is not None:
        feature[FEATURE_LABEL] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def read_split(task_name: str, split: str, data_dir: str) -> List[tf.train.Example]:
    task = get_task(task_name)
    path = os.path.join(data_dir, task.directory, task.splits[split])
    return list(executor.read_examples(path, task, executor.is_labeled(task, split)))


def write_file(tmp_path, content: Union[str, bytes], name: str = "bad.tsv") -> str:
    path = os.path.join(str(tmp_path), name)
    with open(path, "wb") as f:
        f.write(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def exec_properties(component: GlueExampleGen) -> Dict[str, object]:
    """The component's execution properties as an orchestrator hands them to Do() (protos already JSON)."""
    return {key: value for key, value in component.exec_properties.items() if value is not None}


def input_splits(component: GlueExampleGen) -> List[Tuple[str, str]]:
    config = proto_utils.json_to_proto(
        component.exec_properties[standard_component_specs.INPUT_CONFIG_KEY], example_gen_pb2.Input()
    )
    return [(split.name, split.pattern) for split in config.splits]


def read_artifact_split(uri: str, split: str) -> List[tf.train.Example]:
    files = glob.glob(os.path.join(uri, f"Split-{split}", "*.gz"))
    assert files, f"no gzipped TFRecords in {uri}/Split-{split}"
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def by_idx(examples: List[tf.train.Example]) -> List[tf.train.Example]:
    return sorted(examples, key=lambda e: e.features.feature[FEATURE_INDEX].int64_list.value[0])


# --- every task's exact format -------------------------------------------------------------------


def test_fixtures_cover_every_file_of_every_task():
    assert set(FIXTURES) == set(TASKS)
    for name, task in TASKS.items():
        assert set(FIXTURES[name]) == set(task.splits.values())


@pytest.mark.parametrize("task_name,split", [(t.name, s) for t in TASKS.values() for s in t.splits])
def test_reads_exact_examples(tmp_path, task_name, split):
    data_dir = write_task(str(tmp_path), task_name)
    _, expected = FIXTURES[task_name][get_task(task_name).splits[split]]
    assert read_split(task_name, split, data_dir) == [make_example(row) for row in expected]


def test_crlf_line_endings_are_read_like_lf(tmp_path):
    path = write_file(tmp_path, "index\tsentence1\tsentence2\tlabel\r\n0\tA b.\tC d.\tentailment\r\n")
    assert list(executor.read_examples(path, get_task("rte"), labeled=True)) == [make_example(("A b.", "C d.", 0, 0))]


# --- component and artifact ----------------------------------------------------------------------


def test_input_config_has_one_split_per_existing_file(tmp_path):
    data_dir = write_task(str(tmp_path), "mnli")
    assert input_splits(GlueExampleGen(data_dir, "MNLI")) == [
        ("train", "MNLI/train.tsv"), ("eval", "MNLI/dev_matched.tsv"), ("eval_mismatched", "MNLI/dev_mismatched.tsv"),
        ("test", "MNLI/test_matched.tsv"), ("test_mismatched", "MNLI/test_mismatched.tsv"),
        ("test_ax", "diagnostic/diagnostic.tsv"),
    ]


def test_missing_test_file_drops_only_that_split(tmp_path):
    data_dir = write_task(str(tmp_path), "mrpc", skip=("test.tsv",))
    assert input_splits(GlueExampleGen(data_dir, "mrpc")) == [("train", "MRPC/train.tsv"), ("eval", "MRPC/dev.tsv")]


@pytest.mark.parametrize("missing", ["train.tsv", "dev.tsv"])
def test_missing_labeled_file_is_an_error_naming_it(tmp_path, missing):
    data_dir = write_task(str(tmp_path), "rte", skip=(missing,))
    with pytest.raises(ValueError, match=re.escape(os.path.join(data_dir, "RTE", missing))):
        GlueExampleGen(data_dir, "rte")


def test_unknown_task_missing_data_dir_and_task_dir(tmp_path):
    with pytest.raises(ValueError, match="Unknown GLUE task 'mrcp'"):
        GlueExampleGen(str(tmp_path), "mrcp")
    with pytest.raises(ValueError, match="data directory not found: " + re.escape(f"{tmp_path}/nowhere")):
        GlueExampleGen(str(tmp_path / "nowhere"), "mrpc")
    missing_task_dir = "task directory not found: " + re.escape(f"{tmp_path}/MRPC") + " .*--task mrpc"
    with pytest.raises(ValueError, match=missing_task_dir):
        GlueExampleGen(str(tmp_path), "mrpc")


def test_executor_do_writes_gzipped_splits(tmp_path):
    data_dir = write_task(str(tmp_path / "glue"), "mrpc")
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    component = GlueExampleGen(data_dir, "mrpc")
    executor.Executor().Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties(component))
    assert artifact_utils.decode_split_names(examples.split_names) == ["train", "eval", "test"]
    for split, file_name in [("train", "train.tsv"), ("eval", "dev.tsv"), ("test", "test.tsv")]:
        expected = [make_example(row) for row in FIXTURES["mrpc"][file_name][1]]
        assert by_idx(read_artifact_split(examples.uri, split)) == expected


def test_a_test_file_missing_at_run_time_gives_an_empty_split_not_an_error(tmp_path):
    """Remote data is not listed when the pipeline is built: a test file may turn out missing only in the pod."""
    data_dir = write_task(str(tmp_path / "glue"), "mrpc")
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    component = GlueExampleGen(data_dir, "mrpc")
    os.remove(os.path.join(data_dir, "MRPC", "test.tsv"))
    executor.Executor().Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties(component))
    files = glob.glob(os.path.join(examples.uri, "Split-test", "*"))
    assert sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP")) == 0
    assert len(read_artifact_split(examples.uri, "train")) == len(FIXTURES["mrpc"]["train.tsv"][1])


def test_local_dag_runner_publishes_examples(tmp_path):
    from tfx.orchestration import metadata, pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    data_dir = write_task(str(tmp_path / "glue"), "cola")
    component = GlueExampleGen(data_dir, "cola")
    LocalDagRunner().run(pipeline.Pipeline(
        pipeline_name="glue_example_gen_test",
        pipeline_root=str(tmp_path / "root"),
        components=[component],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(str(tmp_path / "mlmd.sqlite")),
    ))
    [uri] = glob.glob(str(tmp_path / "root" / "GlueExampleGen" / "examples" / "*"))
    for split, file_name in [("train", "train.tsv"), ("eval", "dev.tsv"), ("test", "test.tsv")]:
        expected = [make_example(row) for row in FIXTURES["cola"][file_name][1]]
        assert by_idx(read_artifact_split(uri, split)) == expected


def test_bad_data_fails_the_executor(tmp_path):
    data_dir = write_task(str(tmp_path / "glue"), "wnli")
    with open(os.path.join(data_dir, "WNLI", "dev.tsv"), "a") as f:
        f.write("1\tA b.\tC d.\tmaybe\n")
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    with pytest.raises(ValueError, match=r"WNLI/dev\.tsv:3: unknown label 'maybe'"):
        executor.Executor().Do(
            {}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties(GlueExampleGen(data_dir, "wnli"))
        )


def test_executor_names_a_file_removed_after_construction(tmp_path):
    data_dir = write_task(str(tmp_path / "glue"), "sst2")
    properties = exec_properties(GlueExampleGen(data_dir, "sst2"))
    os.remove(os.path.join(data_dir, "SST-2", "dev.tsv"))
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    with pytest.raises(ValueError, match="Data file not found: " + re.escape(f"{data_dir}/SST-2/dev.tsv")):
        executor.Executor().Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, properties)


# --- the real GLUE files -------------------------------------------------------------------------


@pytest.mark.parametrize("task_name,split", sorted(REAL_ROWS))
def test_real_file_row_counts(task_name, split):
    data_dir = glue_dir_or_skip(get_task(task_name).directory)
    examples = read_split(task_name, split, data_dir)
    assert len(examples) == REAL_ROWS[(task_name, split)]
    indices = [e.features.feature[FEATURE_INDEX].int64_list.value[0] for e in examples]
    assert indices == list(range(len(examples)))
    if (task_name, split) in REAL_LABEL_COUNTS:
        labels = [e.features.feature[FEATURE_LABEL].int64_list.value[0] for e in examples]
        counts = [labels.count(i) for i in range(get_task(task_name).num_labels)]
        assert counts == REAL_LABEL_COUNTS[(task_name, split)]


def test_real_mrpc_first_row_has_no_byte_order_mark():
    data_dir = glue_dir_or_skip("MRPC")
    first = read_split("mrpc", "train", data_dir)[0]
    assert first == make_example((
        'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .',
        'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his evidence .',
        1, 0,
    ))


def test_real_stsb_scores_are_floats():
    data_dir = glue_dir_or_skip("STS-B")
    first = read_split("stsb", "train", data_dir)[0]
    assert first == make_example(("A plane is taking off.", "An air plane is taking off.", 5.0, 0))


def test_real_qnli_without_train_file_is_a_clear_error():
    data_dir = glue_dir_or_skip("QNLI")
    if os.path.exists(os.path.join(data_dir, "QNLI", "train.tsv")):
        pytest.skip("this copy of QNLI has train.tsv")
    expected = os.path.join(data_dir, "QNLI", "train.tsv")
    with pytest.raises(ValueError, match=f"split 'train' needs the file {re.escape(expected)}, which does not exist"):
        GlueExampleGen(data_dir, "qnli")


# --- bad data: every message names the file, the 1-based line and what was expected --------------

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


@pytest.mark.parametrize("task_name,labeled,content,message", [
    ("rte", True, RTE_HEADER + "0\tA b.\tC d.\tentailment\n1\tA b.\tentailment\n",
     r":3: expected 4 tab-separated columns \(index, sentence1, sentence2, label\), found 3"),
    ("rte", True, RTE_HEADER + "0\tA b.\tC d.\tentailed\n",
     r":2: unknown label 'entailed' in column 'label'; task rte expects one of 'entailment', 'not_entailment'"),
    ("rte", True, RTE_HEADER + "0\tA b.\t  \tentailment\n", r":2: empty sentence in column 'sentence2'"),
    ("cola", True, "gj04\t1\t\tGood.\ngj04\t1\t\t\n", r":2: empty sentence in column 'sentence'"),
    ("stsb", True, "index\tsentence1\tsentence2\tscore\n0\tA.\tB.\tfive\n",
     r":2: score 'five' is not a finite number"),
    ("stsb", True, "index\tsentence1\tsentence2\tscore\n0\tA.\tB.\tnan\n", r":2: score 'nan' is not a finite number"),
    ("rte", True, RTE_HEADER + "zero\tA b.\tC d.\tentailment\n", r":2: index 'zero' is not an integer"),
    ("rte", True, "index\tsentence1\tsentence2\n0\tA b.\tC d.\n",
     r":1: header has no column 'label' \(columns: index, sentence1, sentence2\); is this a RTE file of task rte\?"),
    ("rte", True, RTE_HEADER, r": no data rows \(expected a header line and at least one row\)"),
    ("cola", True, "", r": no data rows \(expected at least one row\)"),
    ("rte", False, "", r": empty file \(expected a header line and at least one row\)"),
])
def test_bad_data_error_names_file_and_line(tmp_path, task_name, labeled, content, message):
    path = write_file(tmp_path, content)
    with pytest.raises(ValueError, match=re.escape(path) + message):
        list(executor.read_examples(path, get_task(task_name), labeled))


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = write_file(tmp_path, RTE_HEADER.encode() + b"0\tA b.\tC d.\tentailment\n1\tCaf\xe9.\tC d.\tentailment\n")
    with pytest.raises(ValueError, match=re.escape(path) + ":3: invalid UTF-8 at byte 6 of the line"):
        list(executor.read_examples(path, get_task("rte"), labeled=True))


def test_missing_file_names_it(tmp_path):
    path = str(tmp_path / "RTE" / "dev.tsv")
    with pytest.raises(ValueError, match="Data file not found: " + re.escape(path)):
        list(executor.read_examples(path, get_task("rte"), labeled=True))


def _rte_rows(count: int, malformed_lines: Tuple[int, ...]) -> str:
    """An RTE file with `count` rows, those at the given 1-based file lines missing a column."""
    rows = [
        f"{i}\tA b.\tC d." if i + 2 in malformed_lines else f"{i}\tA b.\tC d.\tentailment"
        for i in range(count)
    ]
    return RTE_HEADER + "\n".join(rows) + "\n"


def test_rare_malformed_rows_are_skipped_and_logged(tmp_path, caplog):
    path = write_file(tmp_path, _rte_rows(1000, malformed_lines=(502,)))
    with caplog.at_level(logging.WARNING):
        examples = list(executor.read_examples(path, get_task("rte"), labeled=True))
    assert len(examples) == 999
    assert 500 not in [e.features.feature[FEATURE_INDEX].int64_list.value[0] for e in examples]
    assert f"{path}:502: expected 4 tab-separated columns" in caplog.text


def test_one_malformed_row_fails_a_test_file_naming_file_and_line(tmp_path):
    path = write_file(tmp_path, "index\tsentence1\tsentence2\n" + "".join(f"{i}\tA b.\tC d.\n" for i in range(999))
                      + "999\tA b.\n")
    message = f"{path}: 1 of 1000 rows are malformed, and a test file is never thinned (every row must get its "
    message += f"prediction). First ones:\n  {path}:1001: expected 3 tab-separated columns"
    with pytest.raises(ValueError, match=re.escape(message)):
        list(executor.read_examples(path, get_task("rte"), labeled=False))


def test_more_malformed_rows_than_the_cap_fail(tmp_path):
    path = write_file(tmp_path, _rte_rows(1000, malformed_lines=(10, 502)))
    message = f"{path}: 2 of 1000 rows are malformed, more than the 1 (0.1%) that may be skipped."
    message += f" First ones:\n  {path}:10:"
    with pytest.raises(ValueError, match=re.escape(message)):
        list(executor.read_examples(path, get_task("rte"), labeled=True))


# --- download: only the offline part (no network here) -------------------------------------------


def _write_msr(path: str, rows: List[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(BOM + "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n" + "".join(r + "\r\n" for r in rows))


def test_assemble_mrpc_splits_by_dev_ids(tmp_path):
    rows = ['1\t1\t2\tA " quoted " one .\tB .', "0\t3\t4\tC .\tD .", "1\t5\t6\tE .\tF ."]
    _write_msr(str(tmp_path / "train.txt"), rows)
    _write_msr(str(tmp_path / "test.txt"), ["0\t7\t8\tG .\tH ."])
    (tmp_path / "dev_ids.tsv").write_text("3\t4\n")
    download.assemble_mrpc(str(tmp_path / "train.txt"), str(tmp_path / "test.txt"), str(tmp_path / "dev_ids.tsv"),
                           str(tmp_path / "MRPC"))
    header = BOM + "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    assert (tmp_path / "MRPC" / "train.tsv").read_bytes().decode() == header + rows[0] + "\n" + rows[2] + "\n"
    assert (tmp_path / "MRPC" / "dev.tsv").read_bytes().decode() == header + rows[1] + "\n"
    assert (tmp_path / "MRPC" / "test.tsv").read_bytes().decode() == (
        "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t7\t8\tG .\tH .\n"
    )


def _lines(path: str) -> List[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read().rstrip("\n").split("\n")


def test_assemble_mrpc_reproduces_the_real_files(tmp_path):
    """Microsoft-format sources rebuilt from the real GLUE files must give those files back byte for byte."""
    real = os.path.join(glue_dir_or_skip("MRPC"), "MRPC")
    read = {name: _lines(os.path.join(real, name)) for name in ("train.tsv", "dev.tsv", "test.tsv")}
    train_rows = read["train.tsv"][1:] + read["dev.tsv"][1:]
    _write_msr(str(tmp_path / "train.txt"), train_rows)
    _write_msr(str(tmp_path / "test.txt"), ["1\t" + row.split("\t", 1)[1] for row in read["test.tsv"][1:]])
    (tmp_path / "dev_ids.tsv").write_text("".join("\t".join(r.split("\t")[1:3]) + "\n" for r in read["dev.tsv"][1:]))
    download.assemble_mrpc(str(tmp_path / "train.txt"), str(tmp_path / "test.txt"), str(tmp_path / "dev_ids.tsv"),
                           str(tmp_path / "MRPC"))
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        with open(os.path.join(real, name), "rb") as expected, open(tmp_path / "MRPC" / name, "rb") as actual:
            assert actual.read() == expected.read(), name
