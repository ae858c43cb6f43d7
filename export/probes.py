"""The built-in probe set that export-time validation runs through both pipelines.

It covers what production sees (job titles in the four JobBERT-v3 languages, skill lists
longer than the 64-token window), texts that fill any model's window up to 512 tokens (int8
error grows with length and with repetition: a repetitive 200-word text cut at all-mpnet-base-v2's
384 tokens was its worst input), and the inputs most likely to expose a tokenization or
padding mismatch.
"""

from __future__ import annotations

SEED_TITLES = ["Software Engineer", "高级软件开发人员", "Produktmanager", "Científica de datos"]

TITLES = [
    "Data Scientist", "Registered Nurse", "Senior Java Developer", "Warehouse Operative",
    "Head of Human Resources", "Desarrollador Full Stack", "Enfermera de quirófano",
    "Jefe de ventas regional", "Técnico de mantenimiento industrial", "Softwareentwickler (m/w/d)",
    "Vertriebsmitarbeiter im Außendienst", "Pflegefachkraft", "Leiter Finanzbuchhaltung",
    "数据分析师", "人力资源经理", "机械工程师", "销售代表",
]

SKILL_LISTS = [
    "Python, SQL, machine learning, statistics, data visualisation, Tableau, Power BI, Spark, Hadoop, "
    "A/B testing, stakeholder management, communication, TensorFlow, PyTorch, scikit-learn, pandas, "
    "NumPy, cloud computing (AWS, Azure, GCP), Docker, Kubernetes, CI/CD, Git, agile methodologies, "
    "project management, business intelligence, ETL pipelines, data warehousing, deep learning",
    "Patientenversorgung, Wundversorgung, Medikamentengabe, Dokumentation, Pflegeplanung, Hygienestandards, "
    "Notfallmanagement, Teamarbeit, Kommunikation mit Angehörigen, Schichtdienst, Mobilisation, Vitalzeichenkontrolle, "
    "Qualitätsmanagement, Anleitung von Auszubildenden, Palliativpflege, Geriatrie, Intensivpflege",
    "gestión de equipos, negociación con proveedores, planificación de ventas, análisis de mercado, CRM, "
    "Salesforce, prospección de clientes, presentaciones comerciales, elaboración de presupuestos, "
    "seguimiento de KPI, inglés avanzado, atención al cliente, marketing digital, comercio internacional",
    "项目管理，团队领导，需求分析，软件架构设计，Java，Spring Boot，微服务，MySQL，Redis，Kafka，Linux，"
    "持续集成，代码评审，性能优化，云计算，沟通能力，跨部门协作，敏捷开发，技术文档编写，系统测试",
]

# Each is over 512 tokens for any of the supported tokenizers, so it is cut at the model's window.
FULL_LENGTH = [
    " ".join(["Senior software engineer with Python, SQL and cloud experience."] * 60),
    "、".join(["高级数据分析师负责数据建模与报表开发"] * 60),
    " ".join(SKILL_LISTS * 3),
]

EDGE_CASES = [
    "",
    "a",
    "👩‍💻 Developer 🚀",
    "Java开发工程师 Backend – München",
    "   Data Scientist   ",
    "\tProduct Owner\n",
    "C++/C# Engineer (Senior) @ FinTech!!!",
]


def probe_texts() -> list[str]:
    """All probes, in a fixed order."""
    return [*SEED_TITLES, *TITLES, *SKILL_LISTS, *FULL_LENGTH, *EDGE_CASES]
