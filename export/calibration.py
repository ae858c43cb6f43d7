"""Calibration texts for int8: what the encoder sees in production, in JobBERT-v3's languages.

SmoothQuant needs the per-channel activation peaks of real inputs. These built-in texts are
job titles made from roles and seniorities in en, de, es and zh, plus skill lists that fill
the 64-token window. They are written here, not taken from any benchmark data, so that
benchmarks never score the int8 model on its own calibration set. `--calibration FILE`
replaces them with a user's own texts (one per line).
"""

from __future__ import annotations

from pathlib import Path

from .modules.base import CheckpointError

_ROLES = {
    "en": ["Software Engineer", "Data Analyst", "Registered Nurse", "Sales Manager", "Accountant",
           "Mechanical Engineer", "Marketing Coordinator", "Customer Service Representative",
           "Project Manager", "Electrician", "Truck Driver", "Financial Controller", "UX Designer",
           "HR Business Partner", "Warehouse Associate", "Chef de Partie", "Pharmacist",
           "DevOps Engineer", "Legal Counsel", "Teacher", "Physiotherapist", "Store Manager"],
    "de": ["Softwareentwickler", "Datenanalyst", "Gesundheits- und Krankenpfleger", "Vertriebsleiter",
           "Buchhalter", "Maschinenbauingenieur", "Marketingkoordinatorin", "Kundenberater",
           "Projektleiter", "Elektroniker für Betriebstechnik", "Berufskraftfahrer", "Controller",
           "Personalreferentin", "Lagerist", "Koch", "Apotheker", "Rechtsanwalt", "Erzieherin",
           "Physiotherapeut", "Filialleiter", "Steuerfachangestellte", "Mechatroniker"],
    "es": ["Ingeniero de software", "Analista de datos", "Enfermera", "Director comercial", "Contable",
           "Ingeniero mecánico", "Coordinadora de marketing", "Agente de atención al cliente",
           "Jefe de proyecto", "Electricista", "Conductor de camión", "Controller financiero",
           "Diseñador UX", "Técnico de recursos humanos", "Mozo de almacén", "Cocinero", "Farmacéutico",
           "Abogado", "Profesora de primaria", "Fisioterapeuta", "Encargado de tienda", "Administrativo"],
    "zh": ["软件工程师", "数据分析师", "护士", "销售经理", "会计", "机械工程师", "市场专员", "客服代表",
           "项目经理", "电工", "货车司机", "财务总监", "用户体验设计师", "人力资源专员", "仓库管理员",
           "厨师", "药剂师", "运维工程师", "法务顾问", "小学教师", "康复治疗师", "门店店长"],
}
_SENIORITY = {
    "en": ["", "Senior ", "Junior ", "Lead ", "Assistant ", "Head of "],
    "de": ["", "Senior ", "Junior ", "Leitender ", "Stellvertretender ", "Teamleiter "],
    "es": ["", "{} senior", "{} junior", "Jefe de ", "Asistente de ", "Responsable de "],
    "zh": ["", "高级", "初级", "资深", "助理", "首席"],
}
_SKILLS = {
    "en": ["Python", "SQL", "stakeholder management", "budgeting", "patient care", "forklift licence",
           "negotiation", "Excel", "customer service", "AutoCAD", "team leadership", "Salesforce",
           "risk assessment", "agile methods", "inventory control", "food safety", "public speaking"],
    "de": ["Teamfähigkeit", "SAP", "Buchhaltung", "Kundenorientierung", "Führerschein Klasse C",
           "Projektmanagement", "Pflegedokumentation", "Englisch fließend", "Lagerverwaltung",
           "Qualitätssicherung", "Verhandlungsgeschick", "MS Office", "Schichtbereitschaft"],
    "es": ["trabajo en equipo", "atención al paciente", "gestión de proveedores", "contabilidad",
           "Excel avanzado", "inglés fluido", "liderazgo", "ventas consultivas", "prevención de riesgos",
           "logística", "planificación", "comunicación", "carnet de conducir"],
    "zh": ["团队合作", "沟通能力", "项目管理", "数据分析", "客户服务", "财务报表", "英语流利",
           "质量控制", "供应链管理", "编程", "领导能力", "市场营销", "安全生产"],
}


def _title(language: str, seniority: str, role: str) -> str:
    if "{}" in seniority:
        return seniority.format(role)
    if language == "es" and seniority and seniority.endswith("de "):
        return seniority + role[0].lower() + role[1:]
    return seniority + role


def builtin_texts() -> list[str]:
    """Built-in calibration texts: about 530 job titles and 16 long skill lists, in a fixed order."""
    titles = [_title(lang, s, role) for lang, roles in _ROLES.items() for role in roles for s in _SENIORITY[lang]]
    skill_lists = []
    for lang, skills in _SKILLS.items():
        for shift in range(4):  # rotations, so each list is long and different
            rotated = skills[shift:] + skills[:shift]
            skill_lists.append(("，" if lang == "zh" else ", ").join(rotated * 2))
    return titles + skill_lists


def read_texts(path: Path, flag: str = "--calibration") -> list[str]:
    """Texts from a UTF-8 file, one per line, stripped; blank lines are skipped. Errors name the
    file as the value of `flag` (the export option that gave it)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{flag} {path}: cannot read it as UTF-8 text ({exc}).") from exc
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise CheckpointError(f"{flag} {path}: the file holds no text; give one text per line.")
    return texts
